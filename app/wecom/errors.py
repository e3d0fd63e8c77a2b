"""WeCom API failures, which of them are worth trying again (PROTOCOL.md §5.10), and how
their text is made safe to keep.

Error text travels far: into `api_calls.errmsg`, an action's `error_message`, log lines and
`sync` output. A URL in it (aiohttp puts the whole request URL in many of its errors) carries
`corpsecret=` or `access_token=` in its query string, so every message is redacted before it
becomes an errmsg: query strings are cut from URLs, and secret-looking parameters are blanked
wherever they appear.
"""

import re

# System busy, frequency and concurrency limits, and data-version conflicts pass; retrying
# anything else repeats a mistake (bad ids, no permission, an already used welcome code).
RETRYABLE_ERRCODES = frozenset({-1, 6000, 45009, 45033})
# The token is wrong or old: fetch a new one and repeat the call once.
TOKEN_ERRCODES = frozenset({40001, 40014, 41001, 42001})
# Errcodes worth a metric label of their own: PROTOCOL.md §5.10 and those the hub acts on.
# Any other is counted as "other": an errcode comes from the network, and every distinct
# label value is a time series kept for ever.
KNOWN_ERRCODES = (
    frozenset({-1, 0, 6000, 40001, 40003, 40013, 40014, 40050, 40058, 40068, 40096, 40098})
    | frozenset({41001, 41048, 41049, 41051, 41096, 42001, 44001, 45009, 45033, 48002})
    | frozenset({60011, 60020, 60111, 81013, 81017, 84061, 84074, 88213, 90500, 90501})
    | frozenset(range(95000, 95018))
)
# The longest errmsg kept: WeCom's are a sentence and a link.
MAX_ERRMSG_CHARS = 500

_URL_QUERY = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'"<>]*)[?#][^\s'"<>]*""")
_SECRET_PARAMETER = re.compile(r"(access_token|corpsecret|secret|provider_secret)=[^&\s'\"<>]*")


def redact(text: str) -> str:
    """text without the query string of any URL in it, and with any secret-looking
    `name=value` blanked (a URL without a scheme: aiohttp sometimes prints only the path)."""
    if "=" not in text and "://" not in text:  # nothing either pattern could match ("ok")
        return text[:MAX_ERRMSG_CHARS]
    text = _URL_QUERY.sub(r"\1?…", text)
    return _SECRET_PARAMETER.sub(r"\1=…", text)[:MAX_ERRMSG_CHARS]


class WecomApiError(Exception):
    """errcode/errmsg are WeCom's own (errmsg redacted); errcode is None when no WeCom answer
    came (timeout, HTTP 5xx or 3xx, a body that is not JSON or too large)."""

    def __init__(
        self, api: str, errcode: int | None, errmsg: str, *, http_status: int | None = None
    ) -> None:
        errmsg = redact(errmsg)
        super().__init__(f"{api}: errcode {errcode}: {errmsg}")
        self.api = api
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in RETRYABLE_ERRCODES
