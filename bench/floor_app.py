"""The floor for bench/ingest_wrk.py: uvicorn with a bare ASGI app that reads the body and
answers "success", no framework. wecom-hub's callbacks skip FastAPI's layers (ADR 0013), so
this, not the no-op FastAPI app, is what one `serve` process cannot go below: the distance
from it to wecom-hub is wecom-hub's own work per callback.
"""

import gc

from starlette.types import Receive, Scope, Send

_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"7")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"success"})


gc.freeze()  # as `wecom-hub serve` does
