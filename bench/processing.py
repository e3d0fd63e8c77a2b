"""Processing throughput: stored events projected into customer state, per second.

    python bench/processing.py [--events 20000]

Starts a fresh embedded Postgres, runs the migrations, stores a realistic mix of events
(new customers, churn, group joins, app messages, tag changes) and processes them, in the
same run, four ways:

- baseline: the processor's claim-and-mark machinery with a no-op projection;
- 1 processor with the real projection;
- 2 processors side by side on the same database, each in its own OS process, as two
  `wecom-hub worker`s would run.

The clock runs from the first claim to the last event of each run: processes are started,
imported and connected before it (a Python process takes over a second of CPU to import
the app, which two fresh processes spent inside the measurement before). Beside events/s,
the CPU the processors and Postgres spent per event, from /proc (bench/cpu.py): on a
machine shared with other work, events/s moves with the neighbours, CPU per event much
less.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import asyncpg_dsn, create_engine, create_sessionmaker, upgrade_database  # noqa: E402
from app.events.context import Context  # noqa: E402
from app.processing.processor import EventProcessor  # noqa: E402
from app.processing.projection import project  # noqa: E402
from app.runtime import start_embedded_postgres  # noqa: E402
from bench.cpu import children_of, own_seconds, postmaster_pid  # noqa: E402

T0 = 1_700_000_000


def payload(i: int) -> tuple[str, str, dict[str, Any]]:
    """(family, type, fields) of the i-th event: a mix like a busy corp's day."""
    kind = i % 10
    common = {"ToUserName": "wwbench", "CreateTime": str(T0 + i)}
    customer = f"wm{i // 10:08d}"
    if kind < 4:
        return (
            "change_external_contact",
            "add_external_contact",
            {
                **common,
                "FromUserName": "sys",
                "MsgType": "event",
                "Event": "change_external_contact",
                "ChangeType": "add_external_contact",
                "UserID": f"member{i % 50}",
                "ExternalUserID": customer,
                "State": f"ch{i % 7}",
                "WelcomeCode": f"W{i}",
            },
        )
    if kind == 4:
        return (
            "change_external_contact",
            "del_follow_user",
            {
                **common,
                "FromUserName": "sys",
                "MsgType": "event",
                "Event": "change_external_contact",
                "ChangeType": "del_follow_user",
                "UserID": f"member{i % 50}",
                "ExternalUserID": f"wm{(i - 3) // 10:08d}",
            },
        )
    if kind < 7:
        return (
            "change_external_chat",
            "update",
            {
                **common,
                "FromUserName": "sys",
                "MsgType": "event",
                "Event": "change_external_chat",
                "ChatId": f"wr{i % 200:05d}",
                "ChangeType": "update",
                "UpdateDetail": "add_member",
                "JoinScene": "3",
                "MemChangeCnt": "1",
                "MemChangeList": {"Item": customer},
            },
        )
    if kind < 9:
        return (
            "message",
            "text",
            {
                **common,
                "FromUserName": f"member{i % 50}",
                "MsgType": "text",
                "Content": "菜单",
                "MsgId": f"m{i}",
                "AgentID": "1000002",
            },
        )
    return (
        "change_external_tag",
        "update",
        {
            **common,
            "FromUserName": "sys",
            "MsgType": "event",
            "Event": "change_external_tag",
            "Id": f"et{i % 30}",
            "TagType": "tag",
            "ChangeType": "update",
        },
    )


async def reset(dsn: str, count: int) -> None:
    """Empty state, `count` pending events."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "TRUNCATE events, actions, external_contacts, follows, customer_groups,"
            " group_members, messages, tags, tag_groups RESTART IDENTITY CASCADE"
        )
        app_id = await connection.fetchval("SELECT id FROM apps")
        rows = []
        for i in range(count):
            family, kind, fields = payload(i)
            rows.append((app_id, family, kind, f"k{i}", json.dumps(fields)))
        await connection.executemany(
            "INSERT INTO events (app_id, received_at, family, type, dedup_key, raw_body, xml,"
            " payload) VALUES ($1, now(), $2, $3, $4, '', '', $5::jsonb)",
            rows,
        )
        await connection.execute("VACUUM ANALYZE events")
    finally:
        backend = connection.get_server_pid()
        await connection.close()
    await asyncio.to_thread(_gone, backend)


def _gone(pid: int) -> None:
    """Wait (10 s at most) for a process to be gone: a run's CPU is read from /proc, and a
    backend that ends during the reading is counted at one end and not at the other."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


async def no_projection(session: AsyncSession, event: Any, context: Context) -> None:
    return None


class Drainer:
    """One processor, its engine made and a connection open before the clock starts (a
    second processor's process starts, imports and connects before it too: what is timed
    is processing, as for the processor that runs inside this process)."""

    def __init__(self, url: str, name: str, *, real: bool) -> None:
        self.engine = create_engine(url, Settings(_env_file=None, database_url=url), pool_size=2)
        self.processor = EventProcessor(
            create_sessionmaker(self.engine),
            worker=name,
            batch_size=200,
            projector=project if real else no_projection,
        )

    async def connect(self) -> None:
        async with self.engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")

    async def drain(self) -> int:
        """Until nothing is left; the number of events claimed."""
        total = 0
        while claimed := await self.processor.run_once():
            total += claimed
        return total


async def child(url: str, name: str, *, real: bool) -> None:
    """A processor process: ready, then wait for "go" on stdin, drain, report the CPU
    seconds it spent draining, and end when told."""
    drainer = Drainer(url, name, real=real)
    await drainer.connect()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.process_time()
    await drainer.drain()
    print(f"done {time.process_time() - started}", flush=True)
    # Connected until the parent has read Postgres' CPU: a backend that ended meanwhile
    # could be missed.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await drainer.engine.dispose()


def postgres_seconds(postmaster: int) -> float:
    """CPU seconds of the server so far: every process it started, alive or ended."""
    return own_seconds(postmaster, children=True) + sum(
        own_seconds(pid) for pid in children_of(postmaster)
    )


@dataclass(frozen=True)
class Measured:
    seconds: float
    processors_cpu: float  # CPU seconds of the processor processes while they drained
    postgres_cpu: float


async def measure(url: str, postmaster: int, processors: int, *, real: bool) -> Measured:
    if processors == 1:
        drainer = Drainer(url, "bench0", real=real)
        await drainer.connect()
        pg, cpu, started = postgres_seconds(postmaster), time.process_time(), time.perf_counter()
        await drainer.drain()
        elapsed = time.perf_counter() - started
        spent = time.process_time() - cpu
        pg = postgres_seconds(postmaster) - pg
        await drainer.engine.dispose()
        return Measured(elapsed, spent, pg)
    # separate processes: one Python process has one core's worth of CPU
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--drain",
            url,
            f"bench{n}",
            "real" if real else "noop",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(processors)
    ]

    async def said(process: asyncio.subprocess.Process, word: str) -> str:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode().strip()
        if not line.startswith(word):
            sys.exit(f"a processor process failed: it said {line!r}, not {word!r}")
        return line

    async def tell(processes: list[asyncio.subprocess.Process], word: str) -> None:
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{word}\n".encode())
            await process.stdin.drain()

    await asyncio.gather(*(said(c, "ready") for c in children))
    pg, started = postgres_seconds(postmaster), time.perf_counter()
    await tell(children, "go")
    done = await asyncio.gather(*(said(c, "done") for c in children))
    elapsed = time.perf_counter() - started
    pg = postgres_seconds(postmaster) - pg
    await tell(children, "exit")
    codes = await asyncio.gather(*(c.wait() for c in children))
    if any(codes):
        sys.exit(f"a processor process failed: exit codes {codes}")
    return Measured(elapsed, sum(float(line.split()[1]) for line in done), pg)


async def run(url: str, postmaster: int, events: int) -> None:
    dsn = asyncpg_dsn(url)
    connection = await asyncpg.connect(dsn)
    await connection.execute(
        "INSERT INTO apps (slug, corp_id, token_sealed, aes_key_sealed, secret_sealed)"
        " VALUES ('bench', 'wwbench', '', '', '')"
    )
    await connection.close()
    results = []
    for name, processors, real in (
        ("baseline: claim + mark, no projection", 1, False),
        ("1 processor, full projection", 1, True),
        ("2 processors, full projection", 2, True),
    ):
        await reset(dsn, events)
        measured = await measure(url, postmaster, processors, real=real)
        results.append((name, measured))
        print(f"  {name}: {events / measured.seconds:,.0f} events/s", flush=True)
    connection = await asyncpg.connect(dsn)
    pending = await connection.fetchval("SELECT count(*) FROM events WHERE status <> 'processed'")
    await connection.close()

    print(
        f"\n{events:,} events per run: 40% new customers, 10% churn, 20% group joins,"
        " 20% app messages, 10% tag changes\n"
    )
    print("| run | events/s | vs baseline | CPU µs per event: processors + Postgres |")
    print("|---|---:|---:|---:|")
    baseline = events / results[0][1].seconds
    for name, measured in results:
        rate = events / measured.seconds
        cpu = (
            f"{measured.processors_cpu / events * 1e6:.0f}"
            f" + {measured.postgres_cpu / events * 1e6:.0f}"
        )
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.0%} | {cpu} |")
    print(f"\nnot processed after the last run: {pending}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--drain", nargs="+", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.drain:
        url, name, *flags = args.drain
        uvloop.run(child(url, name, real="real" in flags))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    try:
        url = start_embedded_postgres(data_dir)
        upgrade_database(url)
        uvloop.run(run(url, postmaster_pid(data_dir / "postgres"), args.events))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
