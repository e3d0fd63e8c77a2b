"""Ingest with a compiled load generator: wecom-hub against the no-op ceiling and a naive peer.

    python bench/ingest_wrk.py [--rounds 3] [--seconds 10] [--connections 64]

Needs `wrk` (Debian: apt-get install wrk). Starts on one fresh embedded Postgres:

- the no-op ceiling (bench/noop_app.py: the same FastAPI and uvicorn, no crypto, no database);
- the floor (bench/floor_app.py: uvicorn and a bare ASGI app, no framework): wecom-hub's
  callbacks skip FastAPI's layers (ADR 0013), so the floor, not the ceiling, is the cost of
  HTTP alone, and wecom-hub's CPU per callback above the floor's is its own work;
- the naive peer (bench/naive_peer.py: wechatpy + xmltodict + one asyncpg INSERT a request);
- `wecom-hub serve`, with an app added by `wecom-hub apps add`; it only ingests, as the
  peer does (WECOM_HUB_PROCESS_IN_SERVE=false; `--process-in-serve` measures the default
  deployment, each round followed by a wait until everything stored is processed).

Each round drives the four in turn with wrk (2 threads, 64 connections, 10 s), every
request a distinct signed, encrypted callback (so none is a duplicate), and rounds
alternate so drift hits all alike; the median round counts. wrk's own CPU is reported: the
client must not be what is measured; so is each server's CPU per request (Postgres's with
the peer and with wecom-hub). Then wecom-hub is driven open-loop at half its
maximum rate by bench/ingest.py's client (latency from each request's scheduled time), and
every acknowledged event is checked to be in Postgres.

Before that stream, Postgres runs a CHECKPOINT. A cluster fresh from initdb has no WAL
segments to recycle: until its first checkpoint, each new 16 MB segment is created and
zero-filled by a committing backend while every other commit waits (about 65 ms a segment
here, one every 5–8 s at half rate: p99 37–50 ms). A server that has checkpointed once
renames old segments instead, as every database that has run a few minutes does
(checkpoint_timeout is 5 min). `--no-checkpoint` measures the fresh cluster.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import Meter, postmaster_pid  # noqa: E402
from bench.ingest import (  # noqa: E402
    AES_KEY,
    CORP_ID,
    PATH,
    TOKEN,
    Result,
    count_events,
    free_port,
    make_callbacks,
    open_loop,
    server,
)

# Each wrk thread walks its own share of the requests file (thread n takes every n-th line).
LUA = r"""
local requests = {}
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  args_start = args[3]  -- each run starts elsewhere: no request repeats an earlier run's
  local step = tonumber(args[2])
  local n = 0
  for line in io.lines(args[1]) do
    if n % step == id then
      local tab = line:find("\t")
      table.insert(requests, wrk.format("POST", line:sub(1, tab - 1),
        {["Content-Type"] = "text/xml"}, line:sub(tab + 1)))
    end
    n = n + 1
  end
end

function request()
  if counter == 0 then counter = tonumber(args_start) % #requests end
  counter = counter % #requests + 1
  return requests[counter]
end
"""


@dataclass
class WrkResult:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu: float  # wrk's CPU-seconds
    seconds: float

    def row(self) -> str:
        return (
            f"| {self.name} | {self.rate:,.0f} | {self.p50_ms:.1f} | {self.p99_ms:.1f} |"
            f" {self.errors} | {self.client_cpu / self.seconds:.0%} |"
        )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    name: str,
    port: int,
    requests: Path,
    script: Path,
    seconds: float,
    connections: int,
    start: int = 0,
) -> WrkResult:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    command += [f"http://127.0.0.1:{port}/", "--", str(requests), "2", str(start)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"wrk failed: {output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    # The distribution's own lines ("    50%   12.34ms"), not a "+/- Stdev" column's "90.50%".
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", output, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in found.groups())
    cpu = usage.ru_utime + usage.ru_stime
    return WrkResult(name, rate, p50, p99, errors, cpu, seconds)


async def processed(dsn: str) -> None:
    """Wait (bounded) until serve has processed every stored event."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 300
        query = "SELECT count(*) FROM events WHERE status = 'pending'"
        while time.monotonic() < deadline:
            if not await connection.fetchval(query):
                return
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


def write_requests(path: Path, count: int, prefix: str) -> None:
    with path.open("w") as out:
        for callback in make_callbacks(count, prefix):
            body = callback.body.decode()
            assert "\t" not in body and "\n" not in body
            out.write(f"{PATH}?{urlencode(callback.params)}\t{body}\n")


def paced_run(port: int, rate: float, args: argparse.Namespace) -> tuple[Result, float]:
    """wecom-hub open-loop at `rate`; the result and the client's CPU-seconds."""
    paced = make_callbacks(int(rate * args.half_seconds), "paced")
    name = f"wecom-hub at {rate:,.0f}/s" + (", first" if args.half_rate else " (half max)")
    client_before = time.process_time()
    half = uvloop.run(open_loop(name, port, paced, rate))
    return half, time.process_time() - client_before


async def checkpoint(dsn: str) -> None:
    """CHECKPOINT, so that the WAL the rounds wrote is recycled into future segments (the
    module's docstring says why); its own writes end before the stream starts."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()
    print(f"  CHECKPOINT before the stream: {time.monotonic() - started:.1f} s", flush=True)


# What Postgres did besides the stream's own commits, read before and after it, to tell a
# stall's cause: WAL segments created (each zero-filled while commits wait), autovacuum and
# autoanalyze of the events the rounds wrote, checkpoints.
_POSTGRES_WORK = """
    SELECT (SELECT coalesce(sum(writes), 0) FROM pg_stat_io
            WHERE object = 'wal' AND context = 'init') AS "WAL segments created",
           autovacuum_count AS "autovacuums of events",
           autoanalyze_count AS "autoanalyzes of events",
           (SELECT num_timed + num_requested FROM pg_stat_checkpointer) AS checkpoints
    FROM pg_stat_user_tables WHERE relname = 'events'
"""


async def postgres_work(dsn: str) -> dict[str, float]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(_POSTGRES_WORK)
    finally:
        await connection.close()
    return {} if row is None else {k: float(v) for k, v in row.items()}


def median(results: list[WrkResult]) -> WrkResult:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--half-rate",
        type=float,
        help="run the open-loop stream at this rate before the rounds (after the 2 s "
        "warm-ups), instead of at half the measured maximum after them and a CHECKPOINT "
        "(so on a cluster never checkpointed, as --no-checkpoint)",
    )
    parser.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="run the open-loop stream on the cluster as the rounds left it, never "
        "checkpointed (its commits wait while new WAL segments are zero-filled)",
    )
    parser.add_argument(
        "--half-seconds",
        type=float,
        default=30,
        help="the open-loop run: long enough that its p99 is the steady state's, not one "
        "moment's (a pause of 50 ms holds up 100 requests, 1%% of 10 s)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=240_000,
        help="distinct callbacks per target; each run starts on a share of its own, which "
        "must outlast it (3 rounds of 10 s at 6,000/s), or callbacks repeat and fewer are stored",
    )
    parser.add_argument(
        "--process-in-serve",
        action="store_true",
        help="serve also processes what it stores (the default deployment); without it, "
        "ingest alone is measured, as the peer does nothing else either",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {"WECOM_HUB_DATA_DIR": str(data_dir), "WECOM_HUB_LOG_LEVEL": "WARNING"}
    env |= {k[6:]: v for k, v in os.environ.items() if k.startswith("BENCH_WECOM_HUB_")}
    env["WECOM_HUB_PROCESS_IN_SERVE"] = "true" if args.process_in_serve else "false"
    wecom_hub = shutil.which("wecom-hub", path=str(Path(sys.executable).parent)) or "wecom-hub"
    hub_port, noop_port, naive_port = free_port(), free_port(), free_port()
    floor_port = free_port()
    dsn = f"postgresql://postgres@/postgres?host={data_dir / 'postgres'}"
    script = data_dir / "callbacks.lua"
    script.write_text(LUA)
    print(f"preparing {args.requests:,} distinct encrypted callbacks for each target…", flush=True)
    files = {}
    for target in ("noop", "naive", "hub"):
        files[target] = data_dir / f"{target}.txt"
        write_requests(files[target], args.requests, target)
    files["floor"] = files["noop"]  # neither decrypts: the same bodies serve both
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    add_app = [wecom_hub, "apps", "add", "--slug", "bench", "--corp-id", CORP_ID]
    add_app += ["--token", TOKEN, "--aes-key", AES_KEY, "--secret", "bench-secret-value"]
    peer_env = env | {
        "BENCH_TOKEN": TOKEN,
        "BENCH_AES_KEY": AES_KEY,
        "BENCH_CORP_ID": CORP_ID,
        "BENCH_DSN": dsn,
    }
    rows: dict[str, list[WrkResult]] = {"floor": [], "noop": [], "naive": [], "hub": []}
    during: dict[str, float] = {}
    try:
        with server(
            [wecom_hub, "serve", "--port", str(hub_port)],
            env,
            f"http://127.0.0.1:{hub_port}/readyz",
        ) as hub:
            subprocess.run(add_app, env=env, check=True, capture_output=True)
            with (
                server(
                    [*uvicorn, "bench.floor_app:app", "--port", str(floor_port)],
                    env,
                    f"http://127.0.0.1:{floor_port}/",
                ) as floor_server,
                server(
                    [*uvicorn, "bench.noop_app:app", "--port", str(noop_port)],
                    env,
                    f"http://127.0.0.1:{noop_port}/docs",
                ) as noop_server,
                server(
                    [*uvicorn, "bench.naive_peer:app", "--port", str(naive_port)],
                    peer_env,
                    f"http://127.0.0.1:{naive_port}/docs",
                ) as naive_server,
            ):
                ports = {
                    "floor": floor_port,
                    "noop": noop_port,
                    "naive": naive_port,
                    "hub": hub_port,
                }
                names = {
                    "floor": "floor (uvicorn, bare ASGI)",
                    "noop": "no-op ceiling",
                    "naive": "naive peer (wechatpy + xmltodict + INSERT)",
                    "hub": "wecom-hub",
                }
                for target in rows:  # warm-up
                    wrk("warm-up", ports[target], files[target], script, 2, args.connections)
                half: Result | None = None
                if args.half_rate:  # first: before the rounds have written 200,000 events
                    half, client_cpu = paced_run(hub_port, args.half_rate, args)
                postgres = {"postgres": postmaster_pid(data_dir / "postgres")}
                meters = {
                    "floor": Meter({"floor": floor_server.pid}, {}),
                    "noop": Meter({"no-op": noop_server.pid}, {}),
                    "naive": Meter({"naive peer": naive_server.pid}, postgres),
                    "hub": Meter({"serve": hub.pid}, postgres),
                }
                cpu: dict[str, list[dict[str, float]]] = {target: [] for target in rows}
                profiler = None
                if folder := os.environ.get("BENCH_PROFILE"):  # py-spy on serve, all rounds
                    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
                    record = [str(py_spy), "record", "--nonblocking", "--format", "raw"]
                    profiler = subprocess.Popen(
                        [*record, "-r", "200", "-p", str(hub.pid), "-o", f"{folder}/serve.txt"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                spacing = args.requests // 2 // (args.rounds + 1)  # per wrk thread and run
                for round_ in range(args.rounds):
                    for target in rows:
                        meters[target].start()
                        result = wrk(
                            names[target],
                            ports[target],
                            files[target],
                            script,
                            args.seconds,
                            args.connections,
                            start=(round_ + 1) * spacing,
                        )
                        if target == "hub" and args.process_in_serve:
                            uvloop.run(processed(dsn))  # the next run starts on a quiet machine
                        spent = meters[target].stop()
                        requests = result.rate * result.seconds
                        cpu[target].append({k: v / requests * 1000 for k, v in spent.items()})
                        rows[target].append(result)
                        print(f"  {result.name}: {result.rate:,.0f} requests/s", flush=True)
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(30)
            if half is None:
                if not args.no_checkpoint:
                    uvloop.run(checkpoint(dsn))
                before = uvloop.run(postgres_work(dsn))
                half, client_cpu = paced_run(hub_port, median(rows["hub"]).rate / 2, args)
                during = {k: v - before[k] for k, v in uvloop.run(postgres_work(dsn)).items()}
            stored = uvloop.run(count_events(data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    floor, ceiling, naive, hub_result = (median(rows[t]) for t in rows)
    print(
        f"\nmachine: {os.cpu_count()} cores; wrk -t2 -c{args.connections} -d{args.seconds:g}s, "
        f"every request a distinct callback; median of {args.rounds} alternating rounds"
    )
    for target, results in rows.items():
        print(f"rounds, requests/s, {target}: " + ", ".join(f"{r.rate:,.0f}" for r in results))
    print()
    print("| run | requests/s | p50 ms | p99 ms | errors | wrk CPU (of one core) |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in (floor, ceiling, naive, hub_result):
        print(result.row())
    print(
        f"| {half.name} (Python open-loop client, {client_cpu / half.seconds:.0%} of a core) |"
        f" {half.rate:,.0f} | {half.percentile(50):.1f} | {half.percentile(99):.1f} |"
        f" {half.failures} | |"
    )
    print()
    per_request: dict[str, dict[str, float]] = {}
    for target, rounds in cpu.items():
        medians = {k: sorted(c[k] for c in rounds)[len(rounds) // 2] for k in rounds[0]}
        per_request[target] = medians
        print(
            f"CPU per request, {target} (median round): "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items())
        )
    print(
        "wecom-hub's own work per callback (serve above the floor): "
        f"{per_request['hub']['serve'] - per_request['floor']['floor']:.3f} ms"
    )
    print(f"wecom-hub / ceiling: {hub_result.rate / ceiling.rate:.2f} (target ≥ 0.5)")
    print(f"wecom-hub / naive peer: {hub_result.rate / naive.rate:.2f}× (target ≥ 2.5×)")
    print(
        f"p99, {half.name}: {half.percentile(99):.1f} ms (target < 20 ms at half max);"
        f" p99.9 {half.percentile(99.9):.1f} ms, max {half.percentile(100):.1f} ms"
    )
    if during:
        print(
            "Postgres during that stream: "
            + ", ".join(f"{name} {value:g}" for name, value in during.items())
        )
    acknowledged = sum(round(r.rate * r.seconds) for r in rows["hub"]) + half.requests
    print(f"events stored: {stored:,} (acknowledged by the measured runs: about {acknowledged:,})")


if __name__ == "__main__":
    main()
