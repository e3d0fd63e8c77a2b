"""Ingest throughput and acknowledgement latency, against a no-op ceiling in the same run.

    python bench/ingest.py [--events 6000] [--concurrency 64] [--seconds 10]

Starts `wecom-hub serve` on a fresh embedded Postgres and registers an app with
`wecom-hub apps add`, exactly as a user would; starts a no-op FastAPI app under the same
uvicorn (the ceiling: HTTP and framework cost only). Both are driven with the same load of
distinct encrypted callbacks:

1. closed loop, `concurrency` requests in flight: maximum throughput and latency;
2. wecom-hub open loop at half its own maximum rate: latency from each request's scheduled
   send time (so a stall cannot hide queued requests).

Then it checks that every acknowledged event is in Postgres.
"""

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.crypto import WXBizMsgCrypt  # noqa: E402
from app.simulator.callbacks import SignedCallback, build_callback, text_message  # noqa: E402

CORP_ID = "wwbench0000000001"
TOKEN = "benchToken123"
PATH = "/callback/bench"
AES_KEY = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(43))


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"| {self.name} | {self.rate:,.0f} | {self.percentile(50):.1f} | "
            f"{self.percentile(99):.1f} | {self.failures} |"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


@contextmanager
def server(
    command: list[str], env: dict[str, str], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(ready_url, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def make_callbacks(count: int, prefix: str) -> list[SignedCallback]:
    crypt = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=CORP_ID)
    return [
        build_callback(
            crypt,
            text_message(
                corp_id=CORP_ID, from_user="member", content=f"你好 {i}", msg_id=f"{prefix}-{i}"
            ),
        )
        for i in range(count)
    ]


class Connection:
    """A bare HTTP/1.1 keep-alive connection. httpx's pool tops out near 200 requests/s at
    concurrency 64 on this machine, which would benchmark the client, not the server; this
    does ~4,000/s, like wrk, and leaves the CPU to the servers under test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, callback: SignedCallback) -> bytes:
        """The response body; a keep-alive connection the server closed while idle is
        reopened once, as any HTTP client does. b"" when the request failed."""
        for _ in range(2):
            try:
                return await self._post(path, callback)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
        return b""

    async def _post(self, path: str, callback: SignedCallback) -> bytes:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        head = (
            f"POST {path}?{urlencode(callback.params)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: text/xml\r\nContent-Length: {len(callback.body)}\r\n\r\n"
        )
        writer.write(head.encode() + callback.body)
        await writer.drain()
        headers = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(
            int(h.split(b":", 1)[1]) for h in headers if h.lower().startswith(b"content-length:")
        )
        return await reader.readexactly(length)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def closed_loop(
    name: str, port: int, callbacks: list[SignedCallback], concurrency: int
) -> Result:
    latencies: list[float] = []
    failures = 0
    queue = iter(callbacks)

    async def worker() -> None:
        nonlocal failures
        connection = Connection(port)
        for callback in queue:
            sent = time.perf_counter()
            body = await connection.post(PATH, callback)
            latencies.append(time.perf_counter() - sent)
            failures += body != b"success"
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    return Result(name, len(callbacks), elapsed, latencies, failures)


async def open_loop(name: str, port: int, callbacks: list[SignedCallback], rate: float) -> Result:
    """Requests leave on schedule whatever the server does (a dispatcher starts each one at
    its time; a stalled server cannot slow the arrivals), each on a free connection from a
    pool, as WeCom's many senders would. Latency counts from the scheduled time."""
    latencies: list[float] = []
    lags: list[float] = []
    failures = 0
    idle = [Connection(port) for _ in range(256)]
    in_flight: set[asyncio.Task[None]] = set()

    async def send(scheduled: float, callback: SignedCallback) -> None:
        nonlocal failures
        lags.append(time.perf_counter() - scheduled)
        connection = idle.pop() if idle else Connection(port)
        body = await connection.post(PATH, callback)
        latencies.append(time.perf_counter() - scheduled)
        failures += body != b"success"
        idle.append(connection)

    started = time.perf_counter()
    for index, callback in enumerate(callbacks):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(scheduled, callback))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - started
    for connection in idle:
        connection.close()
    lags.sort()
    print(
        f"  {name}: client send lag p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
        f"p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms"
    )
    return Result(name, len(callbacks), elapsed, latencies, failures)


def histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts of wecom_hub_callback_seconds, as /metrics reports them."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("wecom_hub_callback_seconds_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The histogram bucket holding quantile q of the requests between two scrapes."""
    deltas = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = deltas[float("inf")]
    for bound, count in deltas.items():
        if count >= q * total:
            return f"≤ {bound * 1000:g} ms" if bound != float("inf") else "> 5 s"
    return "?"


async def count_events(data_dir: Path) -> int:
    socket_dir = data_dir / "postgres"
    connection = await asyncpg.connect(host=str(socket_dir), user="postgres", database="postgres")
    try:
        return int(await connection.fetchval("SELECT count(*) FROM events"))
    finally:
        await connection.close()


def median(results: list[Result]) -> Result:
    """The round with the median throughput: one noisy round does not decide the ratio."""
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000, help="per closed-loop round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10, help="length of the open-loop run")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {"WECOM_HUB_DATA_DIR": str(data_dir), "WECOM_HUB_LOG_LEVEL": "WARNING"}
    # BENCH_WECOM_HUB_X=… passes WECOM_HUB_X=… to the service, to compare settings.
    env |= {k[6:]: v for k, v in os.environ.items() if k.startswith("BENCH_WECOM_HUB_")}
    wecom_hub = shutil.which("wecom-hub", path=str(Path(sys.executable).parent)) or "wecom-hub"
    hub_port, noop_port = free_port(), free_port()
    print(
        f"preparing {args.rounds} x 2 x {args.events:,} distinct encrypted callbacks…", flush=True
    )
    warmup = make_callbacks(500, "warm")
    rounds = [
        (make_callbacks(args.events, f"noop{i}"), make_callbacks(args.events, f"hub{i}"))
        for i in range(args.rounds)
    ]
    noop_cmd = [sys.executable, "-m", "uvicorn", "bench.noop_app:app", "--port", str(noop_port)]
    noop_cmd += ["--no-access-log", "--log-level", "warning"]
    add_app = [wecom_hub, "apps", "add", "--slug", "bench", "--corp-id", CORP_ID]
    add_app += ["--token", TOKEN, "--aes-key", AES_KEY, "--secret", "bench-secret-value"]

    try:
        with (
            server(noop_cmd, env, f"http://127.0.0.1:{noop_port}/docs"),
            server(
                [wecom_hub, "serve", "--port", str(hub_port)],
                env,
                f"http://127.0.0.1:{hub_port}/readyz",
            ),
        ):
            subprocess.run(add_app, env=env, check=True, capture_output=True)
            for port in (noop_port, hub_port):
                uvloop.run(closed_loop("warm-up", port, warmup, args.concurrency))
            ceilings, hubs = [], []
            for noop_load, hub_load in rounds:  # alternate, so drift hits both alike
                ceilings.append(
                    uvloop.run(closed_loop("no-op ceiling", noop_port, noop_load, args.concurrency))
                )
                hubs.append(
                    uvloop.run(closed_loop("wecom-hub", hub_port, hub_load, args.concurrency))
                )
            ceiling, hub = median(ceilings), median(hubs)
            half_rate = hub.rate / 2
            paced = make_callbacks(int(half_rate * args.seconds), "paced")
            before = histogram(hub_port)
            half = uvloop.run(
                open_loop(f"wecom-hub at {half_rate:,.0f}/s (half max)", hub_port, paced, half_rate)
            )
            after = histogram(hub_port)
            stored = uvloop.run(count_events(data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    sent = len(warmup) + sum(r.requests for r in hubs) + half.requests
    acknowledged = sent - sum(r.failures for r in hubs) - half.failures
    print()
    print(
        f"machine: {os.cpu_count()} cores; concurrency {args.concurrency}; "
        f"{args.events:,} events per round, median of {args.rounds} alternating rounds"
    )
    print(
        "rounds, requests/s: no-op "
        + ", ".join(f"{r.rate:,.0f}" for r in ceilings)
        + "; wecom-hub "
        + ", ".join(f"{r.rate:,.0f}" for r in hubs)
    )
    print()
    print("| run | requests/s | p50 ms | p99 ms | failures |")
    print("|---|---:|---:|---:|---:|")
    for result in (ceiling, hub, half):
        print(result.row())
    print()
    ratio = hub.rate / ceiling.rate
    print(f"wecom-hub / ceiling throughput: {ratio:.0%} (target ≥ 50%)")
    print(f"p99 at half max rate: {half.percentile(99):.1f} ms (target < 50 ms)")
    print(
        "  measured inside wecom-hub (request in → answer out), by histogram bucket: "
        f"p50 {bucket_quantile(before, after, 0.5)}, p99 {bucket_quantile(before, after, 0.99)}"
    )
    print(f"events stored: {stored:,} of {acknowledged:,} acknowledged")
    if stored != acknowledged:
        sys.exit("an acknowledged event is missing")


if __name__ == "__main__":
    main()
