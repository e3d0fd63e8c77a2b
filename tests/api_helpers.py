"""Helpers for tests of the REST API: keys made directly through the service, and problem
answers checked by status and code."""

from typing import Any

import httpx
from fastapi import FastAPI

from app.apikeys import Scope, create_key
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.main import Hub


def hub_state(app: FastAPI) -> Hub:
    hub: Hub = app.state.hub
    return hub


async def new_key(app: FastAPI, scope: Scope = Scope.ADMIN, *, name: str = "test") -> str:
    """A fresh API key of `scope`, committed, as a client would hold it."""
    async with hub_state(app).sessionmaker.begin() as session:
        _, key = await create_key(session, name=name, scope=scope)
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def auth(app: FastAPI, scope: Scope = Scope.ADMIN) -> dict[str, str]:
    """The Authorization header of a fresh key of `scope`."""
    return bearer(await new_key(app, scope))


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem+json body of an answer that must be refused with `status` and `code`."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert body["code"] == code, body
    assert body["status"] == status, body
    return body


async def key_header(settings: Settings, scope: Scope = Scope.ADMIN) -> dict[str, str]:
    """The Authorization header of a fresh key, made on the database directly (for tests
    whose app object is out of reach, e.g. behind the `live` fixture)."""
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            _, key = await create_key(session, name="test", scope=scope)
    finally:
        await engine.dispose()
    return bearer(key)
