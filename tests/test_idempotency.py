"""Idempotency-Key on POST /api/v1/apikeys: one resource per key, whatever the retries."""

import asyncio
import hashlib
import json

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.api import idempotency
from app.apikeys import prune_idempotent_requests
from tests.api_helpers import auth, hub_state, problem
from tests.processing_helpers import wait_for

URL = "/api/v1/apikeys"


def _body(name: str = "CRM sync") -> bytes:
    return json.dumps({"name": name, "scope": "read"}).encode()


async def _post(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None, body: bytes
) -> httpx.Response:
    extra = {} if key is None else {"Idempotency-Key": key}
    return await client.post(
        URL, content=body, headers={**headers, **extra, "Content-Type": "application/json"}
    )


async def _count(db: asyncpg.Connection, name: str = "CRM sync") -> int:
    found: int = await db.fetchval("SELECT count(*) FROM api_keys WHERE name = $1", name)
    return found


async def test_a_repeat_gets_the_first_answer(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    admin = await auth(hub)
    first = await _post(client, admin, "order-1", _body())
    again = await _post(client, admin, "order-1", _body())
    assert first.status_code == again.status_code == 201, again.text
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await _count(db) == 1


async def test_another_body_under_the_same_key_is_refused(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    admin = await auth(hub)
    assert (await _post(client, admin, "order-1", _body())).status_code == 201
    problem(await _post(client, admin, "order-1", _body("other")), 422, "idempotency_key_reused")
    assert await _count(db, "other") == 0


async def test_concurrent_repeats_create_one_key(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    admin = await auth(hub)
    answers = await asyncio.gather(*[_post(client, admin, "order-1", _body()) for _ in range(4)])
    assert [answer.status_code for answer in answers] == [201] * 4
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum("Idempotent-Replayed" in answer.headers for answer in answers) == 3
    assert await _count(db) == 1


async def test_a_repeat_waits_for_the_first_to_commit(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    admin = await auth(hub)
    first = db.transaction()
    await first.start()
    await _hold(db, "order-1", _body(), answer={"id": 42})
    repeat = asyncio.create_task(_post(client, admin, "order-1", _body()))
    await wait_for(lambda: _waiting_on_lock(hub), within=5)
    await first.commit()
    answer = await repeat
    assert (answer.status_code, answer.json()) == (201, {"id": 42})
    assert answer.headers["Idempotent-Replayed"] == "true"


async def test_a_long_first_request_gets_repeats_refused(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "LOCK_TIMEOUT_MS", 100)
    admin = await auth(hub)
    async with db.transaction():
        await _hold(db, "order-1", _body(), answer=None)
        answer = await _post(client, admin, "order-1", _body())
    problem(answer, 409, "idempotency_in_progress")


async def test_a_failed_request_is_not_remembered(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    """The name passes the schema and is refused by the service, inside the transaction."""
    admin = await auth(hub)
    blank = _body("   ")
    problem(await _post(client, admin, "order-1", blank), 422, "validation_failed")
    problem(await _post(client, admin, "order-1", blank), 422, "validation_failed")
    assert await db.fetchval("SELECT count(*) FROM idempotent_requests") == 0
    assert (await _post(client, admin, "order-1", _body())).status_code == 201


async def test_keys_are_per_api_key_and_optional(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    one, other = await auth(hub), await auth(hub)
    assert (await _post(client, one, "order-1", _body())).status_code == 201
    assert (await _post(client, other, "order-1", _body())).status_code == 201
    assert (await _post(client, one, None, _body())).status_code == 201
    assert (await _post(client, one, None, _body())).status_code == 201
    assert await _count(db) == 4


@pytest.mark.parametrize("key", ["", "k" * 256, "order\x01"])
async def test_malformed_keys_are_refused(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection, key: str
) -> None:
    problem(await _post(client, await auth(hub), key, _body()), 400, "bad_idempotency_key")
    assert await _count(db) == 0


async def test_prune_forgets_old_answers(hub: FastAPI, db: asyncpg.Connection) -> None:
    await auth(hub)
    await _hold(db, "old", _body(), answer={"id": 1})
    await _hold(db, "new", _body(), answer={"id": 2})
    await db.execute(
        "UPDATE idempotent_requests SET created_at = now() - interval '25 hours' WHERE key = 'old'"
    )
    async with hub_state(hub).sessionmaker.begin() as session:
        assert await prune_idempotent_requests(session) == 1
    assert await db.fetchval("SELECT array_agg(key) FROM idempotent_requests") == ["new"]


async def _hold(db: asyncpg.Connection, key: str, body: bytes, *, answer: object) -> None:
    """The record a first request with `key` would have made (answer None: still running),
    as the first API key made."""
    await db.execute(
        "INSERT INTO idempotent_requests"
        " (api_key_id, key, method, path, body_sha256, status_code, response)"
        " VALUES ((SELECT min(id) FROM api_keys), $1, 'POST', $2, $3, $4, $5::jsonb)",
        key,
        URL,
        hashlib.sha256(body).digest(),
        None if answer is None else 201,
        None if answer is None else json.dumps(answer),
    )


async def _waiting_on_lock(hub: FastAPI) -> bool:
    async with hub_state(hub).engine.connect() as connection:
        waiting = await connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(waiting.scalar_one())
