"""GET|POST /callback/{slug}: the URL WeCom's servers call (PROTOCOL.md §1).

Plain Starlette routes, not FastAPI ones: this is the hot path, it takes no JSON and needs
no schema, and FastAPI's per-request dependency solving cost a fifth of its throughput.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app.callbacks import errors, verify
from app.callbacks.errors import CallbackRejected
from app.callbacks.writer import IngestBusy, NewEvent
from app.db import DatabaseUnavailable, is_unavailable
from app.events.identity import classify
from app.metrics import CALLBACK_SECONDS, CALLBACKS
from app.routers.deps import hub_of
from app.routers.problems import problem_response, title_for
from app.wecom_apps import AppDirectory, AppKeys

log = logging.getLogger(__name__)
# Bound once: labels() costs a lock and a dict lookup, ~10 µs, on every callback.
_STORED, _DUPLICATE = CALLBACKS.labels("stored"), CALLBACKS.labels("duplicate")


async def verify_url(request: Request) -> PlainTextResponse:
    hub, slug = hub_of(request), request.path_params["slug"]
    query = verify.CallbackQuery.from_params(request.query_params, url_verification=True)
    app = await _app_keys(hub.apps, slug)
    echo = verify.verify_url(
        app.crypt, query, now=time.time(), window=hub.settings.callback_timestamp_window
    )
    CALLBACKS.labels("url_verified").inc()
    # At INFO: the one sign an operator connecting an app gets that it worked.
    log.info("callback URL verified", extra={"app": slug})
    # The raw plaintext: no quotes, no newline, or WeCom refuses the URL.
    return PlainTextResponse(echo)


async def receive(request: Request) -> Response:
    started = time.perf_counter()
    hub, slug = hub_of(request), request.path_params["slug"]
    received_at = datetime.now(UTC)
    query = verify.CallbackQuery.from_params(request.query_params, url_verification=False)
    app = await _app_keys(hub.apps, slug)
    body = await _read_body(
        request,
        hub.settings.callback_max_body_bytes,
        within=hub.settings.callback_body_timeout_seconds,
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
    _log_first(request, app, delivery)
    reply = await hub.replies.passive_reply(
        app_id=app.id,
        crypt=app.crypt,
        fields=delivery.fields,
        timestamp=query.timestamp,
        nonce=query.nonce,
    )
    CALLBACK_SECONDS.observe(time.perf_counter() - started)
    if reply is not None:
        return Response(reply, media_type="application/xml")
    return PlainTextResponse("success")


def _log_first(request: Request, app: AppKeys, delivery: verify.Delivery) -> None:
    """At INFO, each app's first stored callback since start: proof that callbacks arrive,
    without a line per callback."""
    seen: set[int] = request.app.state.callback_apps_seen
    if app.id in seen:
        return
    seen.add(app.id)
    family, kind = classify(delivery.fields)
    log.info(
        "first callback from app since start",
        extra={"app": app.slug, "family": family, "type": kind},
    )


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


async def _read_body(request: Request, limit: int, *, within: float) -> bytes:
    """Read at most `limit` bytes, the whole body within callback_body_timeout_seconds: a
    larger body is refused without being buffered, a slower one (a client that stalls
    halfway) is cut off instead of holding its connection and buffers for ever."""
    declared = request.headers.get("content-length", "")
    # isascii: "²" is a digit to isdigit() but not to int(); the length check keeps int()
    # off thousands of digits, which it refuses.
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise errors.body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise errors.body_too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise errors.body_timeout(within) from None
    return b"".join(chunks)


async def callback(request: Request) -> Response:
    """One route for both methods, so a 405 names both in its Allow header."""
    if request.method == "POST":
        return await receive(request)
    return await verify_url(request)


def install(app: FastAPI) -> None:
    # First in the table: every callback is matched against the routes before it.
    app.router.routes.insert(0, Route("/callback/{slug}", callback, methods=["GET", "POST"]))
    app.state.callback_apps_seen = set()  # app ids: see _log_first
    app.add_exception_handler(CallbackRejected, _rejected)


async def _rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallbackRejected)
    path = request.url.path
    CALLBACKS.labels(exc.code).inc()
    log.warning(
        "callback rejected",
        extra={"path": path, "code": exc.code, "status": exc.status, "detail": exc.message},
    )
    extra: dict[str, Any] = {} if exc.wecom_code is None else {"wecom_code": exc.wecom_code}
    return problem_response(
        exc.status, exc.code, title_for(exc.status), exc.message, instance=path, **extra
    )
