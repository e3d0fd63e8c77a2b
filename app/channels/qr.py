"""A channel's code image, fetched once from the qr_code URL WeCom gave and then served from
Postgres (GET /api/v1/channels/{id}/qr.png, `wecom-hub channels qr`): an operator printing
a poster should not depend on WeCom's image host being reachable at that moment.

The URL comes from WeCom (or from a way `sync` imported), so the fetch is bounded like any
call out: http(s) only, a few redirects and only to public addresses, one deadline for the
whole fetch, at most MAX_BYTES read undecoded, and only a PNG kept. A host that cannot be
reached or does not answer in time is 503 (try again later); one that answers something
else is 502: never a 500.
"""

import asyncio
import ipaddress
import socket

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import service
from app.errors import BadGateway, ErrorCode, Unavailable

MAX_BYTES = 1024 * 1024  # a QR code is a few KB
TIMEOUT_SECONDS = 5.0  # for the whole fetch, redirects and a slow drip included
MAX_REDIRECTS = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RETRY_AFTER_SECONDS = 30
# Never worth a fetch, wherever the URL came from: cloud metadata and link-local addresses.
_NEVER = tuple(
    ipaddress.ip_network(net)
    for net in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "0.0.0.0/8")
)
# What an image host may answer besides image/png (some label every file generically).
_GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _refused(why: str) -> BadGateway:
    return BadGateway(
        f"the QR code's image could not be used: {why}", code=ErrorCode.QR_CODE_UNAVAILABLE
    )


def _unreachable(why: str) -> Unavailable:
    return Unavailable(
        f"the QR code's image could not be fetched ({why}); try again",
        retry_after=RETRY_AFTER_SECONDS,
        code=ErrorCode.QR_CODE_UNAVAILABLE,
    )


async def _addresses(host: str, port: int) -> list[Address]:
    try:
        literal: Address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _unreachable(f"{host} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]


async def _check_host(url: httpx.URL, *, redirected: bool) -> None:
    """The URL WeCom gave may name any host (the simulator is on 127.0.0.1) but never a
    link-local or metadata address; a redirect must lead to public addresses only: WeCom's
    image host has no reason to send us into our own network, a compromised one would.
    Checked as the name resolves now (a later rebinding is not caught: the answer is only
    ever a PNG, never shown verbatim, and bounded)."""
    if url.scheme not in ("http", "https") or not url.host:
        raise _refused(f"{'a redirect' if redirected else 'its URL'} is not http(s)")
    for address in await _addresses(url.host, url.port or (443 if url.scheme == "https" else 80)):
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in _NEVER) or (redirected and not address.is_global):
            where = "a redirect to" if redirected else "its URL names"
            raise _refused(f"{where} {url.host} ({address}), not a public address")


async def fetch_png(url: str, *, seconds: float = TIMEOUT_SECONDS) -> bytes:
    """The PNG at `url`, or a 502/503 problem saying why not. Redirects are followed here,
    each target checked (`_check_host`); the body is read raw (no decompression: a PNG is
    compressed already, and a gzip bomb would not be bounded by MAX_BYTES)."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise _refused("its URL is not valid") from None
    try:
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(
                timeout=seconds, follow_redirects=False, headers={"Accept-Encoding": "identity"}
            ) as http,
        ):
            for hop in range(MAX_REDIRECTS + 1):
                await _check_host(target, redirected=hop > 0)
                async with http.stream("GET", target) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = target.join(response.headers["location"])
                        continue
                    return await _png_of(response)
            raise _refused(f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise _unreachable(f"no answer within {seconds:g} s") from None
    except httpx.InvalidURL:
        raise _refused("a redirect to an invalid URL") from None
    except httpx.HTTPError as exc:  # refused, reset, TLS, a malformed answer or redirect
        raise _unreachable(type(exc).__name__) from None


async def _png_of(response: httpx.Response) -> bytes:
    if response.status_code != 200:
        raise _refused(f"its host answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise _refused(f"an encoded body ({encoding}) although identity was asked for")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "image/png" and content_type not in _GENERIC_TYPES:
        raise _refused(f"not a PNG image ({content_type})")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise _refused(f"{declared} bytes, more than {MAX_BYTES}")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BYTES:
            raise _refused(f"more than {MAX_BYTES} bytes")
    if not body.startswith(PNG_SIGNATURE):
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
