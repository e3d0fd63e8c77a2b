"""With WECOM_HUB_ADMIN_PORT set, /metrics, /docs and /openapi.json answer only on that port
(`serve` listens on it beside --port), so the listener the internet reaches (WeCom's
callbacks, the API through the proxy) shows neither the service's insides nor its schema.
Without it they answer everywhere, as a single-port deployment behind a proxy expects.

The gate is the local port the request arrived on, read from the ASGI scope: no second
application, the same routes."""

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ErrorCode
from app.routers.problems import problem_response, title_for

ADMIN_PATHS = ("/metrics", "/docs", "/openapi.json")


class AdminPortGate:
    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self._app = app
        self._admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(ADMIN_PATHS):
            server = scope.get("server")
            if server is None or server[1] != self._admin_port:
                path = scope["path"]
                answer = problem_response(
                    404,
                    ErrorCode.NOT_FOUND,
                    title_for(404),
                    f"{path} answers on the admin port only",
                    instance=path,
                )
                await answer(scope, receive, send)
                return
        await self._app(scope, receive, send)


def install(app: FastAPI, admin_port: int | None) -> None:
    if admin_port is not None:
        app.add_middleware(AdminPortGate, admin_port=admin_port)
