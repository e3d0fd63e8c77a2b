"""One call to the WeCom server API, done right (PROTOCOL.md §5):

- the access_token comes from the shared TokenCache; when WeCom says the token is bad or old
  (40014, 42001, 41001, 40001) a new one is fetched and the call repeated once;
- transient failures (-1, 45009, 45033, 6000, HTTP 5xx, timeouts) are retried with
  exponential backoff and jitter, never past the caller's deadline;
- anything else fails at once with WeCom's errcode and errmsg kept;
- every HTTP exchange is rate limited beforehand and recorded afterwards, and counted
  towards the action attempt that caused it (app/wecom/calls.py), gettoken included;
- redirects are not followed (a redirect would carry the access_token or corpsecret in its
  query to wherever it points), answers are read up to a bound (a 400 MB answer is refused,
  not read), and an access_token is checked before it is stored and sent back out.

The HTTP client is aiohttp, not httpx: measured in one run against the same local server,
httpx spent about 2 ms of CPU per request, aiohttp 0.2 ms; at 100 welcomes a second, with
an enrichment call each, that difference was most of a core.
"""

import asyncio
import json as jsonlib
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.metrics import WECOM_API_CALLS, WECOM_API_SECONDS, errcode_label
from app.wecom import calls
from app.wecom.errors import TOKEN_ERRCODES, WecomApiError, redact
from app.wecom.ratelimit import NoSlotInTime, RateLimiter
from app.wecom.tokens import TokenCache

log = logging.getLogger(__name__)

# WeCom's tokens are 64-odd characters of this alphabet; anything else is not a token, and it
# is stored sealed in Postgres and sent in every URL, so it is refused at the door.
ACCESS_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=]{1,512}")
# WeCom says 7200 s; a day bounds what a broken answer can make us keep.
MAX_EXPIRES_IN = 86_400


class _AnswerRefused(Exception):
    """The HTTP answer is not one a WeCom API gives (too large, a redirect)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Whose behalf a call is made on."""

    corp_id: str
    secret: str
    app_id: int | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    corp_id: str
    app_id: int | None
    api: str
    http_status: int | None
    errcode: int | None
    errmsg: str | None
    latency_ms: float


Recorder = Callable[[CallRecord], Coroutine[Any, Any, None]]


async def _no_record(record: CallRecord) -> None:
    return None


class WecomClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        tokens: TokenCache | None = None,
        limiter: RateLimiter | None = None,
        record: Recorder = _no_record,
        max_attempts: int = 4,
        backoff_seconds: float = 0.2,
        max_answer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        """http carries the base URL (WECOM_HUB_WECOM_API_BASE_URL) and timeout.
        tokens may be set later (it needs the client to fetch)."""
        self._http = http
        self._max_answer_bytes = max_answer_bytes
        self.tokens = tokens
        self._limiter = limiter or RateLimiter(per_minute=9000, per_hour=135_000, concurrency=8)
        self._record = record
        self._recording: set[asyncio.Task[None]] = set()
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds

    def _record_later(self, record: CallRecord) -> None:
        """Recording is a database write: it must not delay the call's caller (a welcome
        has 20 seconds, all of them its own)."""
        task = asyncio.create_task(self._record(record))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def drain_records(self) -> None:
        """Write the records not yet written (tests, shutdown)."""
        await asyncio.gather(*self._recording, return_exceptions=True)
        close = getattr(self._record, "close", None)
        if close is not None:
            await close()

    async def fetch_token(self, corp_id: str, secret: str) -> tuple[str, int]:
        """gettoken itself: the TokenCache calls this, once for everyone."""
        body = await self._exchange(
            Credentials(corp_id, secret),
            "GET",
            "gettoken",
            params={"corpid": corp_id, "corpsecret": secret},
            json=None,
            media=None,
            token=None,
        )
        return _valid_token(body)

    async def call(
        self,
        credentials: Credentials,
        method: str,
        api: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        media: tuple[str, bytes] | None = None,
        deadline: float | None = None,
        backoff: float | None = None,
        max_attempts: int | None = None,
    ) -> dict[str, Any]:
        """The JSON answer of a successful call (errcode 0). deadline is a time.monotonic()
        instant after which no attempt starts and no backoff is slept; a caller with a short
        deadline (a welcome) passes a short backoff and lets the deadline bound the tries.
        media: (filename, content), sent as media/upload's multipart form."""
        assert self.tokens is not None, "WecomClient.tokens is not set"
        attempt, refreshed, replacing = 0, False, None
        while True:
            attempt += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise WecomApiError(api, None, "deadline passed before the call")
            token = await self.tokens.token(
                credentials.corp_id, credentials.secret, replacing=replacing
            )
            try:
                return await self._exchange(
                    credentials,
                    method,
                    api,
                    params=params,
                    json=json,
                    media=media,
                    token=token,
                    deadline=deadline,
                )
            except WecomApiError as exc:
                if exc.errcode in TOKEN_ERRCODES and not refreshed:
                    refreshed, replacing = True, token
                    attempt -= 1  # a stale token is our problem, not an attempt
                    continue
                if not exc.retryable or attempt >= (max_attempts or self._max_attempts):
                    raise
                base = self._backoff if backoff is None else backoff
                pause = base * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                log.info(
                    "retrying WeCom call",
                    extra={"api": api, "errcode": exc.errcode, "attempt": attempt},
                )
                await asyncio.sleep(pause)

    async def _exchange(
        self,
        credentials: Credentials,
        method: str,
        api: str,
        *,
        params: dict[str, str] | None,
        json: dict[str, Any] | None,
        media: tuple[str, bytes] | None,
        token: str | None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        status: int | None = None
        errcode: int | None = None
        errmsg: str | None = None
        form = None
        if media is not None:  # a fresh form for each attempt: a sent one cannot be resent
            # The filename as is (UTF-8), not percent-encoded: the customer sees it.
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("media", media[1], filename=media[0])
        started = time.perf_counter()
        try:
            async with self._limiter.slot(credentials.corp_id, api, deadline=deadline):
                # Counted once let through, whatever comes of it (a timeout, a refused
                # connection, an error): a request the limiter refused was never sent.
                calls.sent()
                async with self._http.request(
                    method,
                    f"/cgi-bin/{api}",
                    params=query,
                    json=json,
                    data=form,
                    allow_redirects=False,
                    timeout=self._timeout_until(deadline),
                ) as response:
                    status = response.status
                    if status >= 500:
                        errmsg = f"HTTP {status}"
                        raise WecomApiError(api, None, errmsg, http_status=status)
                    raw = await self._read_answer(response)
            try:
                body = jsonlib.loads(raw)  # WeCom says text/plain: no content type check
            except (ValueError, RecursionError):  # RecursionError: nesting a mile deep
                errmsg = "answer is not JSON"
                raise WecomApiError(api, None, errmsg, http_status=status) from None
            if not isinstance(body, dict):
                errmsg = "answer is not a JSON object"
                raise WecomApiError(api, None, errmsg, http_status=status)
            # get_corp_token answers without errcode on success (PROTOCOL.md §6)
            errcode = _errcode(body.get("errcode", 0))
            if errcode is None:
                errmsg = "errcode is not an integer"
                raise WecomApiError(api, None, errmsg, http_status=status)
            errmsg = redact(str(body.get("errmsg", "")))
            if errcode != 0:
                raise WecomApiError(api, errcode, errmsg, http_status=status)
            return body
        except NoSlotInTime as exc:
            errmsg = str(exc)
            raise WecomApiError(api, None, errmsg) from None
        except _AnswerRefused as exc:
            errmsg = str(exc)
            raise WecomApiError(api, None, errmsg, http_status=status) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Not `from exc`: the cause's text holds the whole URL, and a traceback logged
            # with it would print the secret the message no longer has.
            errmsg = redact(f"{type(exc).__name__}: {exc}")
            raise WecomApiError(api, None, errmsg) from None
        finally:
            elapsed = time.perf_counter() - started
            WECOM_API_CALLS.labels(api, errcode_label(errcode, status)).inc()
            WECOM_API_SECONDS.labels(api).observe(elapsed)
            self._record_later(
                CallRecord(
                    credentials.corp_id,
                    credentials.app_id,
                    api,
                    status,
                    errcode,
                    errmsg,
                    elapsed * 1000,
                )
            )

    def _timeout_until(self, deadline: float | None) -> aiohttp.ClientTimeout:
        """The client's timeout, cut to what is left before the caller's deadline: a request
        sent 3 s before a welcome's deadline must not go on for the full 5 s."""
        configured = self._http.timeout
        if deadline is None:
            return configured
        left = max(0.001, deadline - time.monotonic())
        total = min(configured.total, left) if configured.total else left
        return aiohttp.ClientTimeout(total=total, connect=configured.connect)

    async def _read_answer(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, refused as soon as it passes the bound: never buffered whole."""
        if 300 <= response.status < 400:
            raise _AnswerRefused(f"HTTP {response.status}: redirects are not followed")
        limit = self._max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            raise _AnswerRefused(f"answer of {response.content_length} bytes exceeds {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _AnswerRefused(f"answer exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _errcode(value: object) -> int | None:
    """WeCom's errcode as an int (some answers give it as a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 12:
        return int(value)
    return None


def _valid_token(body: dict[str, Any]) -> tuple[str, int]:
    """(access_token, expires_in) from gettoken's answer, or WecomApiError if the answer
    does not hold a plausible token."""
    token, expires_in = body.get("access_token"), body.get("expires_in", 7200)
    if not isinstance(token, str) or not ACCESS_TOKEN.fullmatch(token):
        raise WecomApiError("gettoken", None, "answer holds no valid access_token")
    if (
        not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not 0 < expires_in <= MAX_EXPIRES_IN
    ):
        raise WecomApiError("gettoken", None, "answer holds no valid expires_in")
    return token, expires_in
