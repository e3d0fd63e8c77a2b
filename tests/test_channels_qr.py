"""Fetching a channel's code image from the URL WeCom gave, against small local servers that
misbehave as a compromised or broken image host would: each refusal is a 502 or a 503
problem (never a 500), within the deadline, having read no more than it allows."""

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.channels.qr import MAX_BYTES, PNG_SIGNATURE, fetch_png
from app.errors import AppError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PNG = PNG_SIGNATURE + b"\0" * 64


def answer(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def host() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server, url = await serve(handler)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def fixed(data: bytes) -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return handler


async def refused(url: str, status: int, *, seconds: float = 5.0) -> str:
    with pytest.raises(AppError) as caught:
        await fetch_png(url, seconds=seconds)
    assert caught.value.status == status, caught.value.detail
    assert caught.value.code == "qr_code_unavailable"
    return str(caught.value.detail)


async def test_a_png_is_fetched(host: Callable[[Handler], Awaitable[str]]) -> None:
    url = await host(
        fixed(answer("200 OK", {"Content-Type": "image/png", "Content-Length": str(len(PNG))}, PNG))
    )
    assert await fetch_png(f"{url}/code.png") == PNG


async def test_a_redirect_into_a_private_network_is_not_followed(
    host: Callable[[Handler], Awaitable[str]],
) -> None:
    inner = await host(fixed(answer("200 OK", {"Content-Type": "image/png"}, PNG)))
    for target in (
        f"{inner}/code.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ):
        outer = await host(fixed(answer("302 Found", {"Location": target, "Content-Length": "0"})))
        detail = await refused(f"{outer}/code.png", 502)
        assert "redirect" in detail
    # The URL WeCom gave itself never names a metadata address either.
    await refused("http://169.254.169.254/latest/meta-data/", 502)


async def test_a_body_too_large_encoded_or_not_a_png_is_refused(
    host: Callable[[Handler], Awaitable[str]],
) -> None:
    big = PNG_SIGNATURE + b"\0" * MAX_BYTES
    cases = [
        answer("200 OK", {"Content-Type": "image/png", "Content-Length": str(len(big))}, big),
        answer("200 OK", {"Content-Type": "image/png", "Connection": "close"}, big),
        answer(
            "200 OK",
            {"Content-Type": "image/png", "Content-Encoding": "gzip", "Connection": "close"},
            gzip.compress(PNG),
        ),
        answer("200 OK", {"Content-Type": "text/html", "Connection": "close"}, PNG),
        answer("200 OK", {"Content-Type": "image/png", "Connection": "close"}, b"<html>"),
    ]
    for data in cases:
        url = await host(fixed(data))
        await refused(f"{url}/code.png", 502)


async def test_a_host_that_drips_is_given_up_on_at_the_deadline(
    host: Callable[[Handler], Awaitable[str]],
) -> None:
    async def drip(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer("200 OK", {"Content-Type": "image/png", "Connection": "close"}))
        for _byte in range(100):  # a byte every 0.1 s: no read ever times out on its own
            writer.write(b"\0")
            await writer.drain()
            await asyncio.sleep(0.1)

    url = await host(drip)
    started = time.monotonic()
    await refused(f"{url}/code.png", 503, seconds=0.5)
    assert time.monotonic() - started < 2
