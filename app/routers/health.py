"""Liveness, readiness and Prometheus metrics for devops."""

import functools
import math
import time
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from app.db import is_unavailable
from app.housekeeping import BACKLOG, Backlog
from app.routers.deps import HubDep

router = APIRouter(tags=["health"])

# Two index lookups: the schema's version, and the oldest event waiting for a processor.
_READINESS = text(
    """
    SELECT (SELECT version_num FROM alembic_version),
           extract(epoch FROM now() - (
               SELECT received_at FROM events
               WHERE status = 'pending'
                 AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               ORDER BY id LIMIT 1
           ))::float8
    """
)
Check = dict[str, Any]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@functools.cache
def _revisions() -> tuple[str | None, frozenset[str]]:
    """This code's head revision and every revision it knows, from its migration files."""
    script = ScriptDirectory(str(Path(migrations.__file__).parent))
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


def _migrations(current: str | None) -> Check:
    """Behind (or none): this code needs what the database lacks. Ahead: a newer version of
    wecom-hub migrated it, as in a rolling deploy, whose migrations keep older code working."""
    head, known = _revisions()
    if current == head:
        return {"status": "ok", "revision": current}
    status = "ahead" if current is not None and current not in known else "behind"
    return {"status": status, "revision": current, "head": head}


def _lag(seconds: float | None, threshold: float) -> Check:
    lag = round(seconds or 0.0, 1)
    if not threshold:
        return {"status": "ok", "seconds": lag}
    status = "over_threshold" if lag > threshold else "ok"
    return {"status": status, "seconds": lag, "threshold": threshold}


def _answer(checks: dict[str, Check]) -> JSONResponse:
    statuses = {check["status"] for check in checks.values()}
    if statuses & {"unreachable", "behind"}:
        return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)
    status = "ready" if statuses == {"ok"} else "degraded"
    return JSONResponse({"status": status, "checks": checks})


@router.get("/readyz")
async def readyz(hub: HubDep) -> JSONResponse:
    """503 only when this replica cannot take callbacks (Postgres away, a schema older than
    the code): a load balancer then sends them to another. What else is wrong is named with
    200 and `degraded`: processing lag above all, which every replica shares. Were it a 503,
    the load balancer would take every replica out at once, and WeCom's callbacks, which
    are stored whatever the processors do, would go nowhere."""
    try:
        async with hub.engine.connect() as connection:
            version, lag = (await connection.execute(_READINESS)).one()
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        return _answer({"database": {"status": "unreachable", "error": type(exc).__name__}})
    return _answer(
        {
            "database": {"status": "ok"},
            "migrations": _migrations(version),
            "processing_lag": _lag(lag, hub.settings.ready_max_lag_seconds),
        }
    )


class _Backlog:
    """The queue gauges, read by a scrape at most every `max_age` seconds: they are the same
    on every replica, and several scrapers (two Prometheus, a curl) need not each cost a
    query. While Postgres is away they keep their last values."""

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._read_at = -math.inf

    async def refresh(self, engine: AsyncEngine) -> None:
        if time.monotonic() - self._read_at < self._max_age:
            return
        try:
            async with engine.connect() as connection:
                row = (await connection.execute(text(BACKLOG))).one()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            return
        Backlog.from_row(row).show()
        self._read_at = time.monotonic()


_backlog = _Backlog(max_age=10.0)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(hub: HubDep) -> Response:
    await _backlog.refresh(hub.engine)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
