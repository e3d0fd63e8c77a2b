"""Issue 10 item 6: what anyone on the network can make wecom-hub spend, and what must never
leave it (secrets, tokens, message text) other than where it belongs."""

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import runtime
from app.callbacks.writer import EventWriter, IngestBusy, NewEvent
from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import create_engine, create_sessionmaker
from app.runtime import ConfigurationError
from app.simulator.callbacks import (
    add_external_contact,
    build_callback,
    event_xml,
    text_message,
)
from app.wecom_apps import AppDirectory, mask
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import wait_for


class CountingSessions:
    """A sessionmaker that counts the sessions opened and closed: one per lookup in
    AppDirectory."""

    def __init__(self, inner: async_sessionmaker[AsyncSession]) -> None:
        self.inner = inner
        self.opened = 0
        self.closed = 0

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        self.opened += 1
        try:
            async with self.inner() as session:
                yield session
        finally:
            self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sessions(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[CountingSessions]:
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    yield CountingSessions(create_sessionmaker(engine))
    await engine.dispose()


def directory(settings: Settings, sessions: CountingSessions, clock: Clock) -> AppDirectory:
    assert settings.secret_key
    box = SecretBox(parse_key(settings.secret_key.get_secret_value()))
    return AppDirectory(
        sessions,  # type: ignore[arg-type]  # counts, then hands out the real sessions
        box,
        ttl=10.0,
        unknown_ttl=2.0,
        max_unknown=2,
        clock=clock,
    )


async def test_a_slug_that_cannot_be_one_costs_no_query(
    settings: Settings, sessions: CountingSessions
) -> None:
    apps = directory(settings, sessions, Clock())
    for slug in ("UPPER", "-dash", "a" * 65, "a/b", "é", ""):
        assert await apps.get(slug) is None
    assert sessions.opened == 0


async def test_an_unknown_slug_is_looked_up_once_per_moment(
    settings: Settings, sessions: CountingSessions, wecom_app: RegisteredApp
) -> None:
    clock = Clock()
    apps = directory(settings, sessions, clock)
    for _ in range(3):
        assert await apps.get("nobody") is None
    assert sessions.opened == 1
    clock.now = 2.5  # forgotten after unknown_ttl: an app added since would be found
    assert await apps.get("nobody") is None
    assert sessions.opened == 2
    # Bounded: with room for two, a third unknown slug pushes out the oldest.
    for slug in ("other", "third", "nobody"):
        assert await apps.get(slug) is None
    assert sessions.opened == 5
    assert await apps.get(wecom_app.slug) is not None
    assert await apps.get(wecom_app.slug) is not None
    assert sessions.opened == 6


async def test_a_burst_of_callbacks_as_an_app_nears_the_end_of_its_cache_is_one_lookup(
    settings: Settings, sessions: CountingSessions, wecom_app: RegisteredApp
) -> None:
    """At 1,900 callbacks a second each expiry of the app's entry cost a hundred lookups,
    and the requests waited for them together (the ingest p99, ADR 0008)."""
    clock = Clock()
    apps = directory(settings, sessions, clock)
    assert await apps.get(wecom_app.slug) is not None
    clock.now = 9.0  # near the end of the entry's ttl: answered, and renewed behind
    found = await asyncio.gather(*(apps.get(wecom_app.slug) for _ in range(100)))
    assert all(keys is not None for keys in found)
    assert sessions.opened == 2, "one lookup at start, one renewal for the whole burst"
    await wait_for(lambda: _all_closed(sessions))
    clock.now = 30.0  # past every entry's ttl: the burst waits, for one lookup
    found = await asyncio.gather(*(apps.get(wecom_app.slug) for _ in range(100)))
    assert all(keys is not None for keys in found)
    assert sessions.opened == 3
    await wait_for(lambda: _all_closed(sessions))  # the refresh ran behind the answers


async def _all_closed(sessions: CountingSessions) -> bool:
    return sessions.closed == sessions.opened


async def test_a_full_ingest_queue_is_a_503_ingest_busy(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Nothing takes from this writer's queue of one: the first callback waits in it, the
    second is refused at once instead of queueing without end."""
    writer = EventWriter("unused", window=0, max_batch=1, flushers=1, timeout=1, max_queued=1)
    waiting = asyncio.create_task(writer.store(_event()))
    running = hub.state.hub
    hub.state.hub = dataclasses.replace(running, writer=writer)
    try:
        callback = build_callback(wecom_app.crypt, _text(wecom_app, "hello"))
        response = await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
    finally:
        hub.state.hub = running
        waiting.cancel()
    assert (response.status_code, response.json()["code"]) == (503, "ingest_busy")
    with pytest.raises(IngestBusy):
        await writer.store(_event())


def _event() -> NewEvent:
    return NewEvent(
        app_id=1,
        received_at=datetime.now(UTC),
        create_time=None,
        family="message",
        type="text",
        msg_id=None,
        dedup_key=secrets.token_hex(8),
        raw_body="",
        payload_json="{}",
    )


def _text(app: RegisteredApp, content: str) -> str:
    return text_message(corp_id=app.corp_id, from_user="u", content=content, msg_id="1")


async def test_the_largest_real_callbacks_fit_and_a_larger_body_does_not(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """The body cap (64 KiB) sits just above the largest callbacks WeCom plausibly sends:
    a group join listing 800 customers (~61 KiB), a text of 4,000 CJK characters (16 KiB)."""
    join = event_xml(
        wecom_app.corp_id,
        "change_external_chat",
        {
            "ChatId": "wr" + "a" * 30,
            "ChangeType": "update",
            "UpdateDetail": "add_member",
            "MemChangeCnt": "800",
            "MemChangeList": ["wm" + secrets.token_hex(15) for _ in range(800)],
        },
    )
    for xml in (join, _text(wecom_app, "字" * 4000)):
        callback = build_callback(wecom_app.crypt, xml, agent_id="1000002")
        response = await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
        assert response.status_code == 200, response.text
    callback = build_callback(wecom_app.crypt, _text(wecom_app, "x" * 50_000))
    assert len(callback.body) > 64 * 1024
    response = await client.post(
        f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
    )
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
    assert await db.fetchval("SELECT count(*) FROM events") == 2


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("short-secret", "…(12 chars)"),
        ("Your32CharTokenYour32CharTokenAB", "…(32 chars)"),
        ("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "…(43 chars)"),
    ],
)
def test_mask_shows_the_length_and_no_character(secret: str, shown: str) -> None:
    assert mask(secret) == shown


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about running as root")
def test_embedded_postgres_as_root_says_what_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not refused (the quick start runs as root in containers and CI), but said exactly."""
    data_dir = tmp_path / ("d" * (120 - len(str(tmp_path))))  # refused later: nothing starts
    with caplog.at_level("WARNING"), pytest.raises(ConfigurationError):
        runtime.start_embedded_postgres(data_dir)
    assert any("useradd" in r.getMessage() and "o+rx" in r.getMessage() for r in caplog.records)


def test_a_socket_path_too_long_to_stay_private_is_refused(tmp_path: Path) -> None:
    """The library would move the socket of a server that trusts every connection to a
    folder under /tmp that every local user can reach."""
    data_dir = tmp_path / ("d" * (120 - len(str(tmp_path))))
    with pytest.raises(ConfigurationError, match="too long for a Unix socket"):
        runtime.start_embedded_postgres(data_dir)
    assert not (data_dir / "postgres" / "PG_VERSION").exists()  # no initdb, no server


def test_the_socket_folder_is_kept_private(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    pgdata.mkdir(mode=0o755)
    runtime._private_socket_dir(pgdata)  # what runs before the server starts
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700


# Where what a customer wrote must be kept: the event as received and the message itself.
MAY_HOLD_MESSAGE_TEXT = {
    ("events", "xml"),
    ("events", "payload"),
    ("messages", "content"),
    ("messages", "payload"),
}


async def test_no_secret_reaches_the_database_or_the_logs_in_a_full_scenario(
    live: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    simulator: Simulator,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A customer added (enriched through the simulator, so an access_token is fetched and
    stored) and a message with a known text; then every text column of every table, and
    every log line, is searched."""
    words = f"private words {secrets.token_hex(8)}"
    member = next(iter(simulator.state.corp(wecom_app.corp_id).members))
    with caplog.at_level(logging.DEBUG):
        for xml in (
            add_external_contact(
                corp_id=wecom_app.corp_id, user_id=member, external_user_id="wmSecurity"
            ),
            text_message(corp_id=wecom_app.corp_id, from_user=member, content=words, msg_id="7"),
        ):
            callback = build_callback(wecom_app.crypt, xml, agent_id="1000002")
            response = await live.post(
                f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
            )
            assert response.text == "success"

        async def settled() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT (SELECT count(*) FROM events WHERE status = 'processed') = 2"
                    " AND NOT EXISTS (SELECT FROM actions WHERE status IN ('pending', 'running'))"
                    " AND EXISTS (SELECT FROM access_tokens)"
                )
            )

        await wait_for(settled, within=20)
    [access_token] = list(simulator.state.tokens)
    needles = {
        "secret": wecom_app.secret,
        "token": wecom_app.token,
        "aes_key": wecom_app.aes_key,
        "access_token": access_token,
        "words": words,
    }
    found = {
        (table, column, name)
        for table, column, text in await _every_text_value(db)
        for name, needle in needles.items()
        if needle in text
    }
    assert {(t, c) for t, c, _ in found} <= MAY_HOLD_MESSAGE_TEXT
    assert {name for _, _, name in found} == {"words"}  # kept where it belongs, nothing else
    assert not [name for name, needle in needles.items() if needle in caplog.text]


async def _every_text_value(db: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(table, column, value as text) of every non-null value in the public schema."""
    columns = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    )
    values: list[tuple[str, str, str]] = []
    for table, column in columns:
        # Names from the catalogue, quoted: not input.
        query = f'SELECT "{column}"::text AS v FROM "{table}" WHERE "{column}" IS NOT NULL'  # noqa: S608
        rows = await db.fetch(query)
        values += [(table, column, r["v"]) for r in rows]
    return values
