"""The queue gauges on /metrics, bounded action error labels, and what /readyz says."""

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from app.metrics import action_error_label
from app.routers import health
from tests.conftest import RegisteredApp


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("wecom.45009", "wecom.45009"),
        ("wecom.-1", "wecom.-1"),
        ("wecom.123456789", "wecom.other"),
        ("wecom.--1", "wecom.other"),
        ("wecom.unanswered", "wecom.unanswered"),
        ("http.410", "http.410"),
        ("http.502", "http.5xx"),
        ("http.3014", "http.other"),
        ("crash", "crash"),
        ("address_refused", "address_refused"),
        ("Weird Code!", "other"),
        ("x" * 33, "other"),
    ],
)
def test_action_error_labels_are_bounded(code: str, label: str) -> None:
    assert action_error_label(code) == label


async def _app_id(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT id FROM apps"))


async def _event(
    db: asyncpg.Connection,
    app_id: int,
    key: str,
    *,
    age: float = 0,
    status: str = "pending",
    next_attempt_at: datetime | None = None,
) -> int:
    """An event received `age` seconds ago."""
    return int(
        await db.fetchval(
            """INSERT INTO events (app_id, received_at, family, type, dedup_key, raw_body, xml,
                                   payload, status, next_attempt_at)
               VALUES ($1, now() - make_interval(secs => $2), 'event', 'click', $3, '', '',
                       '{}', $4, $5)
               RETURNING id""",
            app_id,
            age,
            key,
            status,
            next_attempt_at,
        )
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def fresh_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape reads the queues now, whatever an earlier test's scrape read."""
    monkeypatch.setattr(health, "_backlog", health._Backlog(max_age=10.0))


async def test_metrics_show_lag_and_queue_depths(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    wecom_app: RegisteredApp,
    fresh_backlog: None,
) -> None:
    app_id = await _app_id(db)
    oldest = await _event(db, app_id, "a", age=120)
    await _event(db, app_id, "b", age=30)
    # Waiting out a retry's backoff: pending, but not what the lag measures.
    await _event(db, app_id, "c", age=600, next_attempt_at=datetime.now(UTC) + timedelta(minutes=1))
    await _event(db, app_id, "d", age=900, status="processed")
    await db.execute(
        """INSERT INTO actions (kind, target, idempotency_key, event_id, status)
           VALUES ('welcome', 'wm1', 'w1', $1, 'pending'), ('welcome', 'wm2', 'w2', $1, 'pending'),
                  ('mark_tag', 'wm1', 't1', $1, 'succeeded')""",
        oldest,
    )

    samples = _samples((await client.get("/metrics")).text)

    assert 120 <= samples[("wecom_hub_processing_lag_seconds", ())] < 150
    assert samples[("wecom_hub_events_pending", ())] == 3
    assert samples[("wecom_hub_actions_pending", (("kind", "welcome"),))] == 2
    assert samples[("wecom_hub_actions_pending", (("kind", "mark_tag"),))] == 0


async def test_a_scrape_reads_the_queues_at_most_every_ten_seconds(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    wecom_app: RegisteredApp,
    fresh_backlog: None,
) -> None:
    await client.get("/metrics")
    await _event(db, await _app_id(db), "a")
    samples = _samples((await client.get("/metrics")).text)
    assert samples[("wecom_hub_events_pending", ())] == 0


async def test_ready_names_each_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    head, _ = health._revisions()
    assert (response.status_code, response.json()) == (
        200,
        {
            "status": "ready",
            "checks": {
                "database": {"status": "ok"},
                "migrations": {"status": "ok", "revision": head},
                "processing_lag": {"status": "ok", "seconds": 0.0, "threshold": 300.0},
            },
        },
    )


async def test_processing_lag_over_the_threshold_is_degraded_not_unready(
    client: httpx.AsyncClient, db: asyncpg.Connection, wecom_app: RegisteredApp
) -> None:
    await _event(db, await _app_id(db), "a", age=400)
    response = await client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (200, "degraded")
    lag = response.json()["checks"]["processing_lag"]
    assert (lag["status"], lag["threshold"]) == ("over_threshold", 300.0)
    assert 400 <= lag["seconds"] < 430


@pytest.fixture
async def revision(db: asyncpg.Connection) -> AsyncIterator[str]:
    """The database's revision, put back after the test moves it."""
    current = str(await db.fetchval("SELECT version_num FROM alembic_version"))
    yield current
    await db.execute("UPDATE alembic_version SET version_num = $1", current)


@pytest.mark.parametrize(
    ("version", "code", "status", "check"),
    [("0011", 503, "unavailable", "behind"), ("9999", 200, "degraded", "ahead")],
)
async def test_a_schema_behind_the_code_is_unready_one_ahead_is_not(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    revision: str,
    version: str,
    code: int,
    status: str,
    check: str,
) -> None:
    await db.execute("UPDATE alembic_version SET version_num = $1", version)
    response = await client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (code, status)
    assert response.json()["checks"]["migrations"] == {
        "status": check,
        "revision": version,
        "head": revision,
    }


@pytest.fixture
async def no_database(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """wecom-hub started while nothing listens where its database should be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nowhere"
    app: FastAPI = create_app(settings.model_copy(update={"database_url": url}), database_url=url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client


async def test_an_unreachable_database_is_unready_and_metrics_still_answer(
    no_database: httpx.AsyncClient, fresh_backlog: None
) -> None:
    response = await no_database.get("/readyz")
    assert (response.status_code, response.json()) == (
        503,
        {
            "status": "unavailable",
            "checks": {"database": {"status": "unreachable", "error": "ConnectionRefusedError"}},
        },
    )
    assert (await no_database.get("/metrics")).status_code == 200
