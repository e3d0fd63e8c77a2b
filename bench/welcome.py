"""Welcome latency: from the new-customer callback to WeCom receiving send_welcome_msg.

    python bench/welcome.py [--rate 100] [--seconds 60] [--faulty-rate 20]

Runs, as a user would: `wecom-hub apps add` and `wecom-hub rules add welcome` on a fresh
embedded Postgres, `wecom-hub sim serve` as WeCom, `wecom-hub serve` pointed at it. Then two
steady streams of new customers (each with a fresh welcome_code the simulator issued):

1. `--rate` per second, WeCom healthy;
2. `--faulty-rate` per second while WeCom answers 20% of send_welcome_msg calls with -1.

A tenth of the callbacks is delivered twice, as WeCom retries one it thought unanswered.
It prints p50/p99/max from sending the callback to the simulator receiving the (successful)
send_welcome_msg, and counts duplicates (a code sent twice) and expired or failed welcomes.
Targets: p99 < 500 ms, zero duplicates, zero expired.

For the healthy stream it also prints the CPU-seconds each process spent (bench/cpu.py:
the processes' own accounting, Postgres whole) from the first callback until every welcome
and every enrichment has ended, and that per customer (issue 11: ≤ 4 ms in wecom-hub's
processes together, ≤ 2 ms in Postgres). `--workers 0` is the default deployment (one
`serve`); BENCH_PROFILE=folder writes a py-spy profile of each wecom-hub process, and
BENCH_STATEMENTS=1 prints the statements Postgres ran per customer (pg_stat_statements).
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.crypto import WXBizMsgCrypt  # noqa: E402
from app.simulator.callbacks import add_external_contact, build_callback  # noqa: E402
from bench.cpu import Meter, per_item_table, postmaster_pid  # noqa: E402
from bench.ingest import Connection, free_port, server  # noqa: E402

TOKEN = "welcomeBench1"
DUPLICATES = 0.1  # share of callbacks delivered twice
AES_KEY = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(43))
# WeCom allows one corp 10,000 calls of one API a minute (PROTOCOL.md §5.11), and wecom-hub
# budgets 9,000 (WECOM_HUB_WECOM_API_CALLS_PER_MINUTE): one corp's welcomes top out near
# 150 a second, whatever the service can do. Faster streams are spread over several corps,
# each kept at 80% of that budget, as a hub serving several corps receives them.
PER_CORP = 120


def corp(n: int) -> str:
    return f"wwwelcomebench{n:04d}"


def corps_for(rate: float) -> int:
    return max(1, -(-int(rate) // PER_CORP))


async def stream(
    hub_port: int, sim: str, rate: float, seconds: float, duplicates: float, corps: int
) -> dict[str, float]:
    """Send rate×seconds new customers on schedule; welcome_code → when its callback left.
    A `duplicates` share of the callbacks is delivered a second time, as WeCom retries one
    it thought unanswered.

    Callbacks go over bare keep-alive connections (bench/ingest.py's Connection): httpx
    saturates the client's core near 100 requests/s here and would delay the sends it times.
    Customers are added to the simulator once a second, for the second ahead, each with
    its welcome code: externalcontact/get then finds them, so their enrichment is stored
    as a real one is. Customer n goes to corp n % corps (app `bench<n % corps>`)."""
    crypts = [
        WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=corp(n))
        for n in range(corps)
    ]
    sent: dict[str, float] = {}
    idle = [Connection(hub_port) for _ in range(64)]
    per_second = max(1, int(rate) // corps + 1)
    ahead: list[list[tuple[str, str]]] = [[] for _ in range(corps)]  # (customer, code)
    async with httpx.AsyncClient(timeout=10) as http:

        async def one(index: int, customer: str, code: str) -> None:
            n = index % corps
            callback = build_callback(crypts[n], add_external_contact(
                corp_id=corp(n), user_id="zhangsan", external_user_id=customer,
                state="bench", welcome_code=code))  # fmt: skip
            connection = idle.pop() if idle else Connection(hub_port)
            sent[code] = time.time()
            answer = await connection.post(f"/callback/bench{n}", callback)
            if answer == b"success" and index % 100 < duplicates * 100:
                answer = await connection.post(f"/callback/bench{n}", callback)
            idle.append(connection)
            if answer != b"success":
                print(f"  callback answered {answer!r}")

        started = time.monotonic()
        tasks = []
        for index in range(int(rate * seconds)):
            n = index % corps
            if not ahead[n]:
                customers = [f"wm{index:06d}{secrets.token_hex(6)}" for _ in range(per_second)]
                added = await http.post(f"{sim}/sim/corps/{corp(n)}/customers/batch", json=[
                    {"userid": "zhangsan", "external_userid": c, "state": "bench"}
                    for c in customers])  # fmt: skip
                ahead[n] = list(zip(customers, added.json(), strict=True))
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, *ahead[n].pop())))
        await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return sent


async def settle(dsn: str, expected: int) -> dict[str, int]:
    """Wait (bounded) until every welcome action has ended, and every other action (the
    enrichment each new customer brings) too, so the CPU counted is the whole work of each
    customer; the welcome actions' statuses."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses: dict[str, int] = {
                r[0]: r[1]
                for r in await connection.fetch(
                    "SELECT status, count(*) FROM actions WHERE kind = 'welcome' GROUP BY 1"
                )
            }
            busy = await connection.fetchval(
                "SELECT count(*) FROM actions WHERE status IN ('pending', 'running')"
                " OR (SELECT count(*) FROM events WHERE status = 'pending') > 0"
            )
            if sum(statuses.values()) >= expected and not busy:
                return statuses
            await asyncio.sleep(0.2)
        return statuses
    finally:
        await connection.close()


# Per busy table: inserts, updates, HOT updates; and the WAL. Read before and after the
# stream: resetting them (pg_stat_reset) would also blind autovacuum, which reads them.
Counters = tuple[dict[str, tuple[int, int, int]], tuple[int, int]]


async def _counters(connection: asyncpg.Connection) -> Counters:
    tables = await connection.fetch(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
    )
    wal = await connection.fetchrow("SELECT wal_records, wal_bytes FROM pg_stat_wal")
    assert wal is not None
    return {t["relname"]: (t[1], t[2], t[3]) for t in tables}, (wal[0], int(wal[1]))


async def statements(dsn: str, customers: int, before: Counters) -> None:
    """Calls, execution and planning time per customer of the statements that cost most
    (wall time: under load it holds waits for a CPU too, so the ranking counts, not the
    sum; Postgres's CPU is the Meter's); then each busy table's inserts and updates, how
    many updates were HOT, and the WAL written. pg_stat_statements is reset just before
    the stream (reset_statements), which also reads the other counters then (`before`), so
    only the stream's are counted."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT calls, total_exec_time, total_plan_time, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query"
            " FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 25"
        )
        tables, wal = await _counters(connection)
    finally:
        await connection.close()
    # An update that changes no indexed column and finds room on its page is HOT: it adds
    # no index entry. Every other one adds an entry to each of the table's indexes.
    spent = {
        name: tuple(n - m for n, m in zip(now, before[0].get(name, (0, 0, 0)), strict=True))
        for name, now in tables.items()
    }
    busiest = sorted(spent.items(), key=lambda item: -(item[1][0] + item[1][1]))[:8]
    print("  | table | inserts per customer | updates per customer | of them HOT |")
    for name, (inserted, updated, hot) in busiest:
        if inserted + updated:
            print(
                f"  | {name} | {inserted / customers:.2f} | {updated / customers:.2f} |"
                f" {hot / max(updated, 1):.0%} |"
            )
    records, size = (now - then for now, then in zip(wal, before[1], strict=True))
    print(
        f"  WAL per customer: {records / customers:.0f} records, {size / customers / 1024:.1f} KiB"
    )
    print("  | calls per customer | ms per customer | planning ms | rows per call | statement |")
    for row in rows:
        print(
            f"  | {row['calls'] / customers:.2f} | {row['total_exec_time'] / customers:.3f} |"
            f" {row['total_plan_time'] / customers:.3f} |"
            f" {row['rows'] / max(row['calls'], 1):.1f} | {row['query']} |"
        )


async def reset_statements(dsn: str) -> Counters:
    """pg_stat_statements emptied, and the other counters as they stand."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await connection.execute("SELECT pg_stat_statements_reset()")
        return await _counters(connection)
    finally:
        await connection.close()


async def stages(dsn: str) -> str:
    """Where the time went, p50/p99 per stage, from the timestamps the service keeps."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            """
            SELECT
              percentile_cont(0.5) WITHIN GROUP (ORDER BY e.processed_at - e.received_at),
              percentile_cont(0.99) WITHIN GROUP (ORDER BY e.processed_at - e.received_at),
              percentile_cont(0.5) WITHIN GROUP (ORDER BY a.started_at - a.created_at),
              percentile_cont(0.99) WITHIN GROUP (ORDER BY a.started_at - a.created_at),
              percentile_cont(0.5) WITHIN GROUP (ORDER BY a.finished_at - a.started_at),
              percentile_cont(0.99) WITHIN GROUP (ORDER BY a.finished_at - a.started_at)
            FROM actions a JOIN events e ON e.id = a.event_id WHERE a.kind = 'welcome'
            """
        )
        # Stored only if it succeeded: a customer WeCom does not know is skipped (84061).
        enrichments = await connection.fetch(
            "SELECT status, count(*) FROM actions WHERE kind = 'enrich_contact' GROUP BY 1"
        )
        await connection.execute("TRUNCATE actions, events CASCADE")
    finally:
        await connection.close()
    assert row is not None
    ms = [v.total_seconds() * 1000 if v is not None else 0.0 for v in row]
    return (
        f"  stages p50/p99 ms: event processed {ms[0]:.0f}/{ms[1]:.0f}, action claimed "
        f"{ms[2]:.0f}/{ms[3]:.0f}, action ran {ms[4]:.0f}/{ms[5]:.0f}; enrichments "
        + ", ".join(f"{row['status']} {row['count']:,}" for row in enrichments)
    )


async def scenario(
    name: str,
    hub_port: int,
    sim: str,
    dsn: str,
    rate: float,
    seconds: float,
    fault: float,
    corps: int,
    meter: Meter | None = None,
) -> str:
    async with httpx.AsyncClient() as http:
        await http.delete(f"{sim}/sim/calls")
        faults = (
            [{"api": "externalcontact/send_welcome_msg", "errcode": -1, "probability": fault}]
            if fault
            else []
        )
        await http.put(f"{sim}/sim/faults", json=faults)
    before = await settle(dsn, 0)  # the stream before this one has ended and been cleared
    counted: Counters | None = None
    if meter is not None and os.environ.get("BENCH_STATEMENTS"):
        counted = await reset_statements(dsn)
    if meter is not None:
        meter.start()
    profilers = _profile(meter, name) if meter is not None else []
    sent = await stream(hub_port, sim, rate, seconds, DUPLICATES, corps)
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    statuses = await settle(dsn, sum(before.values()) + len(sent))
    if counted is not None:
        await statements(dsn, len(sent), counted)
    if meter is not None:
        spent = meter.stop()
        # Per customer stored and processed (one welcome action each): a callback refused
        # with a 503 cost little and brought no customer.
        customers = sum(statuses.values()) - sum(before.values())
        print(
            f"{name}: CPU while {customers:,} customers (of {len(sent):,} sent) were"
            " stored, welcomed and enriched:"
        )
        for line in per_item_table(spent, customers, "customer"):
            print("  " + line)
        hub = sum(v for k, v in spent.items() if k.startswith(("serve", "worker")))
        print(
            f"  wecom-hub processes together: {hub / max(customers, 1) * 1000:.2f} ms per"
            f" customer (target ≤ 4); Postgres"
            f" {spent['postgres'] / max(customers, 1) * 1000:.2f} ms (target ≤ 2)",
            flush=True,
        )
    async with httpx.AsyncClient() as http:
        calls = (
            await http.get(f"{sim}/sim/calls", params={"api": "externalcontact/send_welcome_msg"})
        ).json()
    delivered = [c for c in calls if c["errcode"] == 0 and c["body"]["welcome_code"] in sent]
    per_code = Counter(c["body"]["welcome_code"] for c in delivered)
    latencies = sorted((c["at"] - sent[c["body"]["welcome_code"]]) * 1000 for c in delivered)
    failures = sum(1 for c in calls if c["errcode"] != 0)
    if os.environ.get("BENCH_TIMELINE"):  # latency by the second the callback left
        started = min(sent.values())
        by_second: dict[int, list[float]] = {}
        for c in delivered:
            at = sent[c["body"]["welcome_code"]]
            by_second.setdefault(int(at - started), []).append((c["at"] - at) * 1000)
        for second, values in sorted(by_second.items()):
            print(f"  t={second:3d}s n={len(values):3d} max={max(values):6.0f} ms")
    statuses = {k: v - before.get(k, 0) for k, v in statuses.items()}
    print(f"{name}:" + await stages(dsn), flush=True)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else 0

    return (
        f"| {name} | {len(sent):,} | {len(per_code):,} | {pct(50):.0f} | {pct(99):.0f} | "
        f"{latencies[-1] if latencies else 0:.0f} | {sum(n - 1 for n in per_code.values())} | "
        f"{statuses.get('expired', 0)} | {statuses.get('failed', 0)} | {failures} |"
    )


def _profile(meter: Meter, name: str) -> list[subprocess.Popen[bytes]]:
    """With BENCH_PROFILE=folder: py-spy samples each wecom-hub process during the stream
    (collapsed stacks, one file per process)."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        return []
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    started = []
    for process, pid in meter.processes.items():
        if process.startswith(("serve", "worker")):
            out = Path(folder) / f"{process.replace(' ', '_')}.txt"
            command = [py_spy, "record", "--nonblocking", "--format", "raw", "-r", "200"]
            command += ["-p", str(pid)]
            started.append(
                subprocess.Popen(
                    [*command, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
    return started


async def listening(dsn: str, expected: int) -> None:
    """Wait (bounded) until the loops are up: each process running them holds a LISTEN
    connection. Without this the first seconds of a stream queue up while the workers are
    still starting."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 60
        query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
        while await connection.fetchval(query) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"the loops of {expected} process(es) did not start in 60 s")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


@contextlib.contextmanager
def worker(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A `wecom-hub worker`; its output goes to $BENCH_WORKER_LOG if set."""
    with open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield process
        finally:
            process.terminate()
            process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--faulty-rate", type=float, default=20)
    parser.add_argument(
        "--corps",
        type=int,
        help=f"corps (apps) the customers are spread over; default: {PER_CORP}/s each at most",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="one `worker --only events` and one `worker --only actions` instead",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`wecom-hub worker` processes beside serve (0: process inside serve)",
    )
    args = parser.parse_args()
    corps = args.corps or corps_for(max(args.rate, args.faulty_rate))

    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {"WECOM_HUB_DATA_DIR": str(data_dir), "WECOM_HUB_LOG_LEVEL": "WARNING"}
    # BENCH_WECOM_HUB_X=… passes WECOM_HUB_X=… to the service, to compare settings.
    env |= {k[6:]: v for k, v in os.environ.items() if k.startswith("BENCH_WECOM_HUB_")}
    wecom_hub = shutil.which("wecom-hub", path=str(Path(sys.executable).parent)) or "wecom-hub"
    hub_port, sim_port = free_port(), free_port()
    hub, sim = f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{sim_port}"
    dsn = f"postgresql://postgres@/postgres?host={data_dir / 'postgres'}"
    try:
        apps = [
            ["apps", "add", "--slug", f"bench{n}", "--corp-id", corp(n), "--token", TOKEN,
             "--aes-key", AES_KEY, "--secret", f"welcome-bench-secret-{n}"]
            for n in range(corps)
        ]  # fmt: skip
        welcome = json.dumps({"text": "欢迎 {member_name} 的客户"})
        rule = ["rules", "add", "welcome", "--name", "bench", "--match", "{}", "--content", welcome]
        for command in (*apps, rule):
            subprocess.run([wecom_hub, *command], env=env, check=True, capture_output=True)
        if os.environ.get("BENCH_STATEMENTS"):  # read when the next command starts Postgres
            with open(data_dir / "postgres" / "postgresql.conf", "a") as conf:
                conf.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
                conf.write("pg_stat_statements.track_planning = on\n")
        hub_env = env | {
            "WECOM_HUB_WECOM_API_BASE_URL": sim,
            "WECOM_HUB_PROCESS_IN_SERVE": "false" if args.workers or args.split else "true",
        }
        with contextlib.ExitStack() as running:
            processes = {
                "simulator (WeCom)": running.enter_context(
                    server(
                        [wecom_hub, "sim", "serve", "--port", str(sim_port)],
                        env,
                        f"{sim}/sim/calls",
                    )
                ).pid,
                "serve": running.enter_context(
                    server([wecom_hub, "serve", "--port", str(hub_port)], hub_env, f"{hub}/readyz")
                ).pid,
            }
            if args.split:
                for loop in ("events", "actions"):
                    processes[f"worker --only {loop}"] = running.enter_context(
                        worker([wecom_hub, "worker", "--only", loop], hub_env)
                    ).pid
            for n in range(0 if args.split else args.workers):
                processes[f"worker {n + 1}"] = running.enter_context(
                    worker([wecom_hub, "worker"], hub_env)
                ).pid
            processes["load generator (this script)"] = os.getpid()
            meter = Meter(processes, {"postgres": postmaster_pid(data_dir / "postgres")})
            looping = 2 if args.split else max(1, args.workers)  # processes running loops
            uvloop.run(listening(dsn, looping))
            rows = [
                uvloop.run(
                    scenario(
                        f"{args.rate:g}/s, WeCom healthy",
                        hub_port,
                        sim,
                        dsn,
                        args.rate,
                        args.seconds,
                        0.0,
                        corps,
                        meter,
                    )
                ),
            ]
            if args.faulty_rate:
                rows.append(
                    uvloop.run(
                        scenario(
                            f"{args.faulty_rate:g}/s, 20% answered -1",
                            hub_port,
                            sim,
                            dsn,
                            args.faulty_rate,
                            args.seconds,
                            0.2,
                            corps,
                        )
                    )
                )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    where = f"{args.workers} `wecom-hub worker` process(es)" if args.workers else "inside serve"
    if args.split:
        where = "`worker --only events` + `worker --only actions`"
    print(
        f"\n{args.seconds:g} s per stream; {corps} corp(s); processing {where}; latency:"
        " callback sent → send_welcome_msg received\n"
    )
    print(
        "| stream | customers | welcomed | p50 ms | p99 ms | max ms | duplicates | expired"
        " | failed | -1 answers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
