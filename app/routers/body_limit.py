"""A bound on every REST API request's body, counted as it arrives, so that no request can
make wecom-hub buffer or spool (multipart goes to a temporary file) more than it would ever
use: WECOM_HUB_API_MAX_BODY_BYTES for JSON, and for an attachment upload the largest file
WeCom takes (20 MiB) plus the multipart framing. The callback has its own, smaller bound
(app/routers/callback.py).

A declared Content-Length over the bound is refused before a byte is read. A body sent
without one (chunked) is counted: the receive that crosses the bound raises, whatever the
route makes of that (FastAPI reports any error while reading a body as a 400) is replaced by
the same 413 problem. A pure ASGI middleware, like the others (app/routers/request_id.py)."""

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.automations.media import MAX_BYTES
from app.errors import ErrorCode
from app.routers.problems import problem_response, title_for

UPLOADS = "/api/v1/media"
MULTIPART_FRAMING = 64 << 10  # boundaries, part headers and the form's other fields


class BodyTooLarge(Exception):
    """Raised into the route from the receive that crossed the bound."""


def limit_for(path: str, api_limit: int) -> int | None:
    if not path.startswith("/api/"):
        return None
    if path == UPLOADS:
        return max(MAX_BYTES.values()) + MULTIPART_FRAMING
    return api_limit


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, api_limit: int) -> None:
        self.app = app
        self.api_limit = api_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = limit_for(scope["path"], self.api_limit) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, send, limit)
            return
        received = 0
        crossed = False
        answered = False

        async def counting_receive() -> Message:
            nonlocal received, crossed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    crossed = True
                    raise BodyTooLarge
            return message

        async def send_or_refuse(message: Message) -> None:
            nonlocal answered
            if not crossed:
                await send(message)
            elif not answered:  # the route's answer to the error is replaced by ours
                answered = True
                await _refuse(scope, send, limit)

        try:
            await self.app(scope, counting_receive, send_or_refuse)
        except BodyTooLarge:
            if not answered:
                answered = True
                await _refuse(scope, send, limit)


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    response = problem_response(
        413,
        ErrorCode.PAYLOAD_TOO_LARGE,
        title_for(413),
        f"the request body is larger than {limit} bytes",
        instance=scope["path"],
        headers={"Connection": "close"},
    )

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


def install(app: FastAPI, api_limit: int) -> None:
    app.add_middleware(BodyLimitMiddleware, api_limit=api_limit)
