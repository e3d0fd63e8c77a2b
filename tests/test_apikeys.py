"""API keys over HTTP: who gets in, with which scope, and how fast a revocation bites."""

import dataclasses

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.apikeys import ApiKeyVerifier, Scope, create_key, hash_key
from app.errors import Invalid
from tests.api_helpers import auth, bearer, hub_state, new_key, problem

UNKNOWN_KEY = "whk_" + "A" * 40


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def install_verifier(app: FastAPI, clock: FakeClock, *, ttl: float, max_entries: int = 100) -> None:
    """This process's verifier, with a clock the test moves."""
    hub = hub_state(app)
    verifier = ApiKeyVerifier(hub.sessionmaker, ttl=ttl, max_entries=max_entries, clock=clock)
    app.state.hub = dataclasses.replace(hub, api_keys=verifier)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": f"Basic {UNKNOWN_KEY}"}, "malformed_api_key"),
        ({"Authorization": "Bearer sk_live_123"}, "malformed_api_key"),
        ({"Authorization": f"Bearer {UNKNOWN_KEY}x"}, "malformed_api_key"),
        ({"Authorization": "Bearer"}, "malformed_api_key"),
        ({"Authorization": f"Bearer {UNKNOWN_KEY}"}, "invalid_api_key"),
    ],
)
async def test_refused_without_a_valid_key(
    client: httpx.AsyncClient, headers: dict[str, str], code: str
) -> None:
    problem(await client.get("/api/v1/apikeys", headers=headers), 401, code)


@pytest.mark.parametrize("scope", [Scope.READ, Scope.WRITE])
async def test_admin_routes_refuse_lesser_scopes(
    client: httpx.AsyncClient, hub: FastAPI, scope: Scope
) -> None:
    headers = await auth(hub, scope)
    for response in [
        await client.get("/api/v1/apikeys", headers=headers),
        await client.post("/api/v1/apikeys", json={"name": "x", "scope": "read"}, headers=headers),
        await client.delete("/api/v1/apikeys/1", headers=headers),
    ]:
        body = problem(response, 403, "insufficient_scope")
        assert "admin" in body["detail"]


async def test_create_list_use_revoke(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    clock = FakeClock()
    install_verifier(hub, clock, ttl=5)
    admin = await auth(hub)

    created = await client.post(
        "/api/v1/apikeys", json={"name": "CRM sync", "scope": "admin"}, headers=admin
    )
    assert created.status_code == 201, created.text
    new = created.json()
    key = new["key"]
    assert key.startswith("whk_") and len(key) == 44 and key.isascii() and key[4:].isalnum()
    assert new["prefix"] == key[:12]
    assert (new["scope"], new["name"], new["revoked_at"]) == ("admin", "CRM sync", None)

    listed = await client.get("/api/v1/apikeys", headers=bearer(key))  # the new key works
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["next_cursor"] is None
    [shown] = [item for item in page["data"] if item["id"] == new["id"]]
    assert shown["prefix"] == key[:12] and "key" not in shown and "key_hash" not in shown
    assert key not in listed.text and key[12:] not in listed.text
    stored = await db.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", new["id"])
    assert stored == hash_key(key)

    revoked = await client.delete(f"/api/v1/apikeys/{new['id']}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None

    # This process checked the key a moment ago: it may serve it until its cache expires…
    assert (await client.get("/api/v1/apikeys", headers=bearer(key))).status_code == 200
    clock.now += 5
    # …and not a moment longer.
    problem(await client.get("/api/v1/apikeys", headers=bearer(key)), 401, "revoked_api_key")


async def test_revoking_twice_keeps_the_first_time(client: httpx.AsyncClient, hub: FastAPI) -> None:
    admin = await auth(hub)
    created = (
        await client.post("/api/v1/apikeys", json={"name": "old", "scope": "read"}, headers=admin)
    ).json()
    first = await client.delete(f"/api/v1/apikeys/{created['id']}", headers=admin)
    second = await client.delete(f"/api/v1/apikeys/{created['id']}", headers=admin)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    problem(await client.delete("/api/v1/apikeys/999999", headers=admin), 404, "api_key_not_found")


async def test_unknown_keys_are_cached_too(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    clock = FakeClock()
    install_verifier(hub, clock, ttl=5)
    problem(
        await client.get("/api/v1/apikeys", headers=bearer(UNKNOWN_KEY)), 401, "invalid_api_key"
    )
    await db.execute(
        "INSERT INTO api_keys (name, scope, prefix, key_hash) VALUES ('late', 'admin', $1, $2)",
        UNKNOWN_KEY[:12],
        hash_key(UNKNOWN_KEY),
    )
    problem(
        await client.get("/api/v1/apikeys", headers=bearer(UNKNOWN_KEY)), 401, "invalid_api_key"
    )
    clock.now += 5
    assert (await client.get("/api/v1/apikeys", headers=bearer(UNKNOWN_KEY))).status_code == 200


async def test_the_cache_stays_bounded(client: httpx.AsyncClient, hub: FastAPI) -> None:
    """Past max_entries the oldest key is forgotten: it is looked up again, and its
    revocation is seen before the ttl is over."""
    clock = FakeClock()
    install_verifier(hub, clock, ttl=60, max_entries=1)
    admin, doomed = await new_key(hub), await new_key(hub, name="doomed")
    assert (await client.get("/api/v1/apikeys", headers=bearer(doomed))).status_code == 200
    listed = (await client.get("/api/v1/apikeys", headers=bearer(admin))).json()["data"]
    [doomed_id] = [item["id"] for item in listed if item["name"] == "doomed"]
    assert (await client.delete(f"/api/v1/apikeys/{doomed_id}", headers=bearer(admin))).is_success
    problem(await client.get("/api/v1/apikeys", headers=bearer(doomed)), 401, "revoked_api_key")


async def test_last_used_at_is_written_at_most_once_a_minute(
    client: httpx.AsyncClient, hub: FastAPI, db: asyncpg.Connection
) -> None:
    clock = FakeClock()
    install_verifier(hub, clock, ttl=5)
    key = await new_key(hub)
    query = "SELECT last_used_at FROM api_keys WHERE key_hash = $1"
    assert await db.fetchval(query, hash_key(key)) is None

    await client.get("/api/v1/apikeys", headers=bearer(key))
    first = await db.fetchval(query, hash_key(key))
    assert first is not None
    clock.now += 59
    await client.get("/api/v1/apikeys", headers=bearer(key))
    assert await db.fetchval(query, hash_key(key)) == first
    clock.now += 1
    await client.get("/api/v1/apikeys", headers=bearer(key))
    assert await db.fetchval(query, hash_key(key)) > first


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "scope": "read"}, "name"),
        ({"name": "x" * 101, "scope": "read"}, "name"),
        ({"name": "x", "scope": "root"}, "scope"),
        ({"name": "x"}, "scope"),
    ],
)
async def test_create_validates_the_body(
    client: httpx.AsyncClient, hub: FastAPI, body: dict[str, str], field: str
) -> None:
    response = await client.post("/api/v1/apikeys", json=body, headers=await auth(hub))
    assert [error["field"] for error in problem(response, 422, "validation_failed")["errors"]] == [
        field
    ]


async def test_service_validates_for_every_caller(hub: FastAPI) -> None:
    """The CLI calls create_key without a pydantic model in front of it."""
    async with hub_state(hub).sessionmaker.begin() as session:
        with pytest.raises(Invalid) as refused:
            await create_key(session, name="   ", scope="root")
    assert [error.field for error in refused.value.errors] == ["name", "scope"]


@pytest.mark.parametrize(
    ("scope", "needed", "allowed"),
    [
        (Scope.READ, Scope.READ, True),
        (Scope.READ, Scope.WRITE, False),
        (Scope.WRITE, Scope.READ, True),
        (Scope.WRITE, Scope.ADMIN, False),
        (Scope.ADMIN, Scope.WRITE, True),
    ],
)
def test_scopes_are_ordered(scope: Scope, needed: Scope, allowed: bool) -> None:
    assert scope.allows(needed) is allowed


def test_openapi_declares_bearer_keys(hub: FastAPI) -> None:
    schema = hub.openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    post = schema["paths"]["/api/v1/apikeys"]["post"]
    assert post["security"] == [{"HTTPBearer": []}]
    assert "Idempotency-Key" in [parameter["name"] for parameter in post["parameters"]]
