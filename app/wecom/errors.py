"""WeCom API failures and which of them are worth trying again (PROTOCOL.md §5.10)."""

# System busy, frequency and concurrency limits, and data-version conflicts pass; retrying
# anything else repeats a mistake (bad ids, no permission, an already used welcome code).
RETRYABLE_ERRCODES = frozenset({-1, 6000, 45009, 45033})
# The token is wrong or old: fetch a new one and repeat the call once.
TOKEN_ERRCODES = frozenset({40001, 40014, 41001, 42001})


class WecomApiError(Exception):
    """errcode/errmsg are WeCom's own; errcode is None when no WeCom answer came (timeout,
    HTTP 5xx, a body that is not JSON)."""

    def __init__(
        self, api: str, errcode: int | None, errmsg: str, *, http_status: int | None = None
    ) -> None:
        super().__init__(f"{api}: errcode {errcode}: {errmsg}")
        self.api = api
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in RETRYABLE_ERRCODES
