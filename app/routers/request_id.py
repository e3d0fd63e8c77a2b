"""A request id for every HTTP request: the caller's X-Request-ID when it looks like one
(a reverse proxy's, so its access log and ours join up), a new one otherwise. Echoed in the
answer, and bound to every log line written while the request is handled."""

import os
import re

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs

HEADER = "X-Request-ID"
HEADER_BYTES = b"x-request-id"
# Proxies' ids (nginx's $request_id, UUIDs, base64 trace ids) pass; anything else, whatever
# it holds and however long, is replaced rather than written into our logs and answers.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


def new() -> str:
    """32 random hex digits, the shape of uuid4().hex at a third of its cost (no UUID
    object): the callback path makes one per request."""
    return os.urandom(16).hex()


def incoming(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER_BYTES:
            text = value.decode("latin-1")
            return text if _ACCEPTED.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming(scope) or new()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        token = logs.bind(request_id=request_id)
        await self.app(scope, receive, send_with_id)
        # Not in a `finally`: an exception that leaves here is logged by Starlette's handler
        # of last resort, outside every middleware, and that line needs the id too. Nothing
        # leaks: uvicorn runs each request in a task of its own, whose context ends with it.
        logs.unbind(token)


def install(app: FastAPI) -> None:
    app.add_middleware(RequestIdMiddleware)
