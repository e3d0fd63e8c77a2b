"""Processing throughput: stored events projected into customer state, per second.

    python bench/processing.py [--events 20000]

Starts a fresh embedded Postgres, runs the migrations, stores a realistic mix of events
(new customers, churn, group joins, app messages, tag changes) and processes them, in the
same run, four ways:

- baseline: the processor's claim-and-mark machinery with a no-op projection;
- 1 processor with the real projection;
- 2 processors side by side on the same database, each in its own OS process, as two
  `wecom-hub worker`s would run.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
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
        await connection.close()


async def no_projection(session: AsyncSession, event: Any, context: Context) -> None:
    return None


async def drain(url: str, name: str, *, real: bool) -> int:
    """One processor until nothing is left; the number of events it claimed."""
    engine = create_engine(url, Settings(_env_file=None, database_url=url), pool_size=2)
    processor = EventProcessor(
        create_sessionmaker(engine),
        worker=name,
        batch_size=200,
        projector=project if real else no_projection,
    )
    total = 0
    while claimed := await processor.run_once():
        total += claimed
    await engine.dispose()
    return total


async def measure(url: str, processors: int, *, real: bool) -> float:
    started = time.perf_counter()
    if processors == 1:
        await drain(url, "bench0", real=real)
    else:  # separate processes: one Python process has one core's worth of CPU
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--drain", url, f"bench{n}", "real" if real else "noop"
            )
            for n in range(processors)
        ]
        codes = await asyncio.gather(*(child.wait() for child in children))
        if any(codes):
            sys.exit(f"a processor process failed: exit codes {codes}")
    return time.perf_counter() - started


async def run(url: str, events: int) -> None:
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
        elapsed = await measure(url, processors, real=real)
        results.append((name, events / elapsed))
        print(f"  {name}: {events / elapsed:,.0f} events/s", flush=True)
    connection = await asyncpg.connect(dsn)
    pending = await connection.fetchval("SELECT count(*) FROM events WHERE status <> 'processed'")
    await connection.close()

    print(
        f"\n{events:,} events per run: 40% new customers, 10% churn, 20% group joins,"
        " 20% app messages, 10% tag changes\n"
    )
    print("| run | events/s | vs baseline |")
    print("|---|---:|---:|")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {rate / results[0][1]:.0%} |")
    print(f"\nnot processed after the last run: {pending}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--drain", nargs="+", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.drain:
        url, name, *flags = args.drain
        uvloop.run(drain(url, name, real="real" in flags))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    try:
        url = start_embedded_postgres(data_dir)
        upgrade_database(url)
        uvloop.run(run(url, args.events))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
