"""CPU per WeCom API call: httpx against aiohttp, in one run, against one local server.

    python bench/http_clients.py [--requests 3000] [--concurrency 16]

Why the WeCom client is on aiohttp (docs/adr/0005-welcome-hot-path.md): the action runner
makes a call per welcome and per enrichment, and at 100 new customers a second the client's
own CPU decided whether the runner kept up. The server is a bare asyncio HTTP/1.1 responder
in the same process (so its small, equal cost is in both figures); each client sends the
same POST with an access_token and a JSON body, as send_welcome_msg does. Figures are CPU
microseconds per request (client and server); the ratio is what to read, the machine is
shared.
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop

ANSWER = b'{"errcode":0,"errmsg":"ok"}'
QUERY = {"access_token": "t" * 64}
BODY = {"welcome_code": "c" * 40, "text": {"content": "欢迎"}}


async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def measure(send: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    """CPU µs per request, client and server together."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await send()

    await asyncio.gather(*(one() for _ in range(200)))  # warm: connections, caches
    cpu = time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    return (time.process_time() - cpu) / requests * 1e6


async def main(requests: int, concurrency: int) -> None:
    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    async with (
        httpx.AsyncClient(base_url=base, limits=limits) as httpx_client,
        aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=100)) as session,
    ):

        async def with_httpx() -> None:
            (await httpx_client.post("/cgi-bin/x", params=QUERY, json=BODY)).json()

        async def with_aiohttp() -> None:
            async with session.post("/cgi-bin/x", params=QUERY, json=BODY) as answer:
                await answer.json(content_type=None)

        figures: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
        for _ in range(3):  # alternating rounds: the machine's noise hits both
            figures["httpx"].append(await measure(with_httpx, requests, concurrency))
            figures["aiohttp"].append(await measure(with_aiohttp, requests, concurrency))
    server.close()
    median = {name: sorted(values)[1] for name, values in figures.items()}
    print(f"{requests:,} requests per round, concurrency {concurrency}, median of 3 rounds\n")
    print("| client | CPU µs per request | vs aiohttp |")
    print("|---|---:|---:|")
    for name, value in median.items():
        print(f"| {name} | {value:,.0f} | {value / median['aiohttp']:.1f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.concurrency))
