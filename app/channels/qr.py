"""A channel's code image, fetched once from the qr_code URL WeCom gave and then served from
Postgres (GET /api/v1/channels/{id}/qr.png, `wecom-hub channels qr`): an operator printing
a poster should not depend on WeCom's image host being reachable at that moment.

The URL comes from WeCom (or from a way `sync` imported), so the fetch is bounded like any
call out: http(s) only, a few redirects, a timeout, at most MAX_BYTES read, and only a PNG
kept. A host that cannot be reached or does not answer in time is 503 (try again later);
one that answers something else is 502: never a 500.
"""

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import service
from app.errors import BadGateway, ErrorCode, Unavailable

MAX_BYTES = 1024 * 1024  # a QR code is a few KB
TIMEOUT_SECONDS = 5.0
MAX_REDIRECTS = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RETRY_AFTER_SECONDS = 30


def _refused(why: str) -> BadGateway:
    return BadGateway(
        f"the QR code's image could not be used: {why}", code=ErrorCode.QR_CODE_UNAVAILABLE
    )


async def fetch_png(url: str, *, seconds: float = TIMEOUT_SECONDS) -> bytes:
    """The PNG at `url`, or a 502/503 problem saying why not."""
    if not url.startswith(("https://", "http://")):
        raise _refused("its URL is not http(s)")
    try:
        async with (
            httpx.AsyncClient(
                timeout=seconds, follow_redirects=True, max_redirects=MAX_REDIRECTS
            ) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise _refused(f"its host answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
                raise _refused(f"{declared} bytes, more than {MAX_BYTES}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise _refused(f"more than {MAX_BYTES} bytes")
            content_type = response.headers.get("content-type", "")
    except httpx.TooManyRedirects:
        raise _refused(f"more than {MAX_REDIRECTS} redirects") from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise Unavailable(
            f"the QR code's image could not be fetched ({type(exc).__name__}); try again",
            retry_after=RETRY_AFTER_SECONDS,
            code=ErrorCode.QR_CODE_UNAVAILABLE,
        ) from None
    if not bytes(body).startswith(PNG_SIGNATURE):
        raise _refused(f"not a PNG image ({content_type or 'no content type'})")
    return bytes(body)


async def channel_png(
    sessionmaker: async_sessionmaker[AsyncSession], wecom: service.Wecom, channel_id: int
) -> bytes:
    """The channel's code as PNG bytes: cached, or fetched now (outside any transaction)
    and cached."""
    async with sessionmaker.begin() as session:
        url, png = await service.qr_source(session, wecom, channel_id)
    if png is not None:
        return png
    png = await fetch_png(url)
    async with sessionmaker.begin() as session:
        await service.keep_qr_png(session, channel_id, url, png)
    return png
