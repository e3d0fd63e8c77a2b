"""GET|POST /callback/{slug}: the URL WeCom's servers call (PROTOCOL.md §1).

A plain ASGI endpoint that the application hands /callback/ requests to before the REST
API's middleware stack and router (app/main.py, ADR 0013). This is the hot path: at a few
hundred callbacks a second the nine layers every API request crosses (error handling,
request id, security headers, body limit, FastAPI's exception and exit-stack middlewares,
routing, the Request object) cost three times the callback's own work. What those layers
give an API request, this module gives a callback itself, once: the request id (echoed and
bound to every log line), the security headers, a bounded body, and an
`application/problem+json` answer for every refusal and every unexpected error.
"""

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.types import Message, Receive, Scope, Send

from app import logs
from app.callbacks import errors, verify
from app.callbacks.errors import CallbackRejected
from app.callbacks.writer import IngestBusy, NewEvent
from app.db import DatabaseUnavailable, is_unavailable
from app.events.identity import classify
from app.metrics import CALLBACK_SECONDS, CALLBACKS
from app.routers import request_id, security_headers
from app.routers.body_deadlines import BodyDeadlines
from app.routers.problems import last_resort, problem_body, title_for
from app.wecom_apps import AppDirectory, AppKeys

if TYPE_CHECKING:
    from app.main import Hub

log = logging.getLogger(__name__)

PREFIX = "/callback/"
METHODS = ("GET", "HEAD", "POST")
# Bound once: labels() costs a lock and a dict lookup, ~10 µs, on every callback.
_STORED, _DUPLICATE = CALLBACKS.labels("stored"), CALLBACKS.labels("duplicate")

Headers = list[tuple[bytes, bytes]]
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_XML = (b"content-type", b"application/xml")
_PROBLEM = (b"content-type", b"application/problem+json")


def slug_of(scope: Scope) -> str | None:
    """The slug of a callback path, or None for a path this endpoint does not answer (no
    slug, or more segments): those go on to the router and its 404. Behind a proxy that
    mounts wecom-hub under a prefix (`--root-path /hub`), the prefix is not part of the
    route, as Starlette's router also reads it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not path.startswith(PREFIX):
        return None
    slug = path[len(PREFIX) :]
    return slug if slug and "/" not in slug else None


class CallbackEndpoint:
    """One per application; `hub` is read per request because the lifespan creates it."""

    def __init__(self, hub: Callable[[], "Hub"]) -> None:
        self._hub = hub
        self._apps_seen: set[int] = set()  # see _log_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send, slug: str) -> None:
        rid = request_id.incoming(scope) or request_id.new()
        token = logs.bind(request_id=rid)
        try:
            answer = await self._answer(scope, receive, slug)
        finally:
            logs.unbind(token)
        status, content_type, body, extra = answer
        headers: Headers = [
            content_type,
            (b"content-length", str(len(body)).encode()),
            (request_id.HEADER_BYTES, rid.encode()),
            *security_headers.DEFAULT,
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self, scope: Scope, receive: Receive, slug: str
    ) -> tuple[int, tuple[bytes, bytes], bytes, Headers]:
        path = scope["path"]
        method = scope["method"]
        try:
            if method == "POST":
                return 200, *await self._receive(scope, receive, slug), []
            if method in ("GET", "HEAD"):
                return 200, _TEXT, await self._verify_url(scope, slug), []
            allow = (b"allow", ", ".join(METHODS).encode())
            body = problem_body(
                405, "method_not_allowed", title_for(405), "Method Not Allowed", instance=path
            )
            return 405, _PROBLEM, _json(body), [allow]
        except CallbackRejected as exc:
            return exc.status, _PROBLEM, _json(_rejected(path, exc)), []
        except Exception as exc:  # every answer is a problem, a 500 only for a bug
            body = last_resort(exc, path=path, method=method)
            return body["status"], _PROBLEM, _json(body), []

    async def _verify_url(self, scope: Scope, slug: str) -> bytes:
        hub = self._hub()
        query = verify.CallbackQuery.from_params(_query(scope), url_verification=True)
        app = await _app_keys(hub.apps, slug)
        echo = verify.verify_url(
            app.crypt, query, now=time.time(), window=hub.settings.callback_timestamp_window
        )
        CALLBACKS.labels("url_verified").inc()
        # At INFO: the one sign an operator connecting an app gets that it worked.
        log.info("callback URL verified", extra={"app": slug})
        # The raw plaintext: no quotes, no newline, or WeCom refuses the URL.
        return echo.encode()

    async def _receive(
        self, scope: Scope, receive: Receive, slug: str
    ) -> tuple[tuple[bytes, bytes], bytes]:
        started = time.perf_counter()
        hub = self._hub()
        received_at = datetime.now(UTC)
        query = verify.CallbackQuery.from_params(_query(scope), url_verification=False)
        app = await _app_keys(hub.apps, slug)
        body = await _read_body(
            scope, receive, hub.settings.callback_max_body_bytes, hub.body_deadlines
        )
        delivery = verify.open_delivery(
            app.crypt, query, body, now=time.time(), window=hub.settings.callback_timestamp_window
        )
        try:
            is_new = await hub.writer.store(NewEvent.received(app.id, received_at, body, delivery))
        except DatabaseUnavailable:
            raise errors.database_unavailable() from None
        except IngestBusy:
            raise errors.ingest_busy() from None
        (_STORED if is_new else _DUPLICATE).inc()
        self._log_first(app, delivery)
        reply = await hub.replies.passive_reply(
            app_id=app.id,
            crypt=app.crypt,
            fields=delivery.fields,
            timestamp=query.timestamp,
            nonce=query.nonce,
        )
        CALLBACK_SECONDS.observe(time.perf_counter() - started)
        if reply is not None:
            return _XML, reply.encode()
        return _TEXT, b"success"

    def _log_first(self, app: AppKeys, delivery: verify.Delivery) -> None:
        """At INFO, each app's first stored callback since start: proof that callbacks
        arrive, without a line per callback."""
        if app.id in self._apps_seen:
            return
        self._apps_seen.add(app.id)
        family, kind = classify(delivery.fields)
        log.info(
            "first callback from app since start",
            extra={"app": app.slug, "family": family, "type": kind},
        )


def _query(scope: Scope) -> dict[str, str]:
    """Decoded exactly once, the last value of a repeated name winning, as Starlette's
    query_params do (verify.CallbackQuery.from_params says why once matters)."""
    query = scope["query_string"].decode("latin-1")
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    # Nothing to decode (a POST's hex signature, digits and nonce): what parse_qsl gives,
    # at a third of its cost.
    pairs = (pair.partition("=") for pair in query.split("&") if pair)
    return {name: value for name, _, value in pairs}


async def _app_keys(apps: AppDirectory, slug: str) -> AppKeys:
    try:
        app = await apps.get(slug)
    except Exception as exc:
        if is_unavailable(exc):
            raise errors.database_unavailable() from None
        raise
    if app is None:
        raise errors.unknown_app(slug)
    return app


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def _read_body(scope: Scope, receive: Receive, limit: int, deadlines: BodyDeadlines) -> bytes:
    """Read at most `limit` bytes, the whole body within callback_body_timeout_seconds: a
    larger body is refused without being buffered, a slower one (a client that stalls
    halfway) is cut off instead of holding its connection and buffers for ever."""
    declared = _header(scope, b"content-length")
    # isascii: "²" is a digit to isdigit() but not to int(); the length check keeps int()
    # off thousands of digits, which it refuses.
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise errors.body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        with deadlines.within():
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    raise errors.client_gone()
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise errors.body_too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise errors.body_timeout(deadlines.seconds) from None
    return b"".join(chunks)


def _rejected(path: str, exc: CallbackRejected) -> dict[str, Any]:
    CALLBACKS.labels(exc.code).inc()
    log.warning(
        "callback rejected",
        extra={"path": path, "code": exc.code, "status": exc.status, "detail": exc.message},
    )
    extra: dict[str, Any] = {} if exc.wecom_code is None else {"wecom_code": exc.wecom_code}
    return problem_body(
        exc.status, exc.code, title_for(exc.status), exc.message, instance=path, **extra
    )


def _json(body: dict[str, Any]) -> bytes:
    """As Starlette's JSONResponse renders."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
