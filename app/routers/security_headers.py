"""Security headers on every answer: a browser that is led to one (a link, a frame, a
sniffed download) treats it as the data it is, never as a page of ours to render or embed.

    X-Content-Type-Options: nosniff    a JSON or plain-text answer is never run as HTML/JS
    Referrer-Policy: no-referrer       /docs links leak no URL to another site
    X-Frame-Options: DENY              nothing of ours can be framed (clickjacking)
    Content-Security-Policy            none of our answers may load anything, except /docs,
                                       which loads Swagger UI from this origin only
    Cache-Control: no-store            /api/v1 answers carry customers' data: no proxy or
                                       browser cache keeps a copy

/docs needs `'unsafe-inline'`: FastAPI's page starts Swagger UI with an inline script, and
Swagger UI styles its elements inline and draws its icons as `data:` images.

A pure ASGI middleware, not Starlette's BaseHTTPMiddleware: the callback path pays one list
of precomputed tuples per answer. Starlette puts its handler of last resort (a 500
`internal_error`) outside every middleware, so those answers, which are bugs, go without.
"""

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Headers = tuple[tuple[bytes, bytes], ...]

_COMMON: Headers = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_NOTHING_LOADS = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_SWAGGER_UI = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'none'"
)
DEFAULT: Headers = (*_COMMON, (b"content-security-policy", _NOTHING_LOADS))
DOCS: Headers = (*_COMMON, (b"content-security-policy", _SWAGGER_UI))
API: Headers = (*DEFAULT, (b"cache-control", b"no-store"))


def headers_for(path: str) -> Headers:
    if path.startswith("/api/"):
        return API
    if path == "/docs":
        return DOCS
    return DEFAULT


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = headers_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list: a Response may hand out its own, and must not grow per send.
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.add_middleware(SecurityHeadersMiddleware)
