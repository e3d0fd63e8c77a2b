"""With WECOM_HUB_ADMIN_PORT, /metrics, /docs and the schema answer only on the admin port;
callbacks, health and the API answer on the public one as before."""

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.api_helpers import problem

ADMIN = 9911


@pytest.fixture
async def gated(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"admin_port": ADMIN}))
    async with app.router.lifespan_context(app):
        yield app


async def test_admin_endpoints_answer_on_the_admin_port_only(gated: FastAPI) -> None:
    transport = httpx.ASGITransport(app=gated)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://hub.test") as public,
        httpx.AsyncClient(transport=transport, base_url=f"http://hub.test:{ADMIN}") as admin,
    ):
        for path in ("/metrics", "/docs", "/openapi.json"):
            body = problem(await public.get(path), 404, "not_found")
            assert "admin port" in body["detail"]
            assert (await admin.get(path)).status_code == 200, path
        assert (await public.get("/healthz")).status_code == 200
        problem(await public.get("/api/v1/events"), 401, "missing_api_key")


async def test_without_an_admin_port_they_answer_everywhere(client: httpx.AsyncClient) -> None:
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
