"""Every REST API body is bounded (issue 10: "request body limits on every endpoint"): a
declared length over the bound is refused unread, a chunked body is refused once it crosses
it, and the answer is the same 413 problem either way, with the request id and security
headers every answer has."""

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.apikeys import Scope
from app.automations.media import MAX_BYTES
from app.config import Settings
from app.main import create_app
from tests.api_helpers import auth, problem

LIMIT = 4096


@pytest.fixture
async def small(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[FastAPI]:
    app = create_app(settings.model_copy(update={"api_max_body_bytes": LIMIT}))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(small: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small)
    async with httpx.AsyncClient(transport=transport, base_url="http://wecom-hub.test") as c:
        yield c


def rule(text: str) -> dict[str, object]:
    return {"kind": "welcome", "name": "big", "match": {}, "content": {"text": text}}


async def test_a_body_under_the_bound_is_taken(client: httpx.AsyncClient, small: FastAPI) -> None:
    answer = await client.post("/api/v1/rules", json=rule("你好"), headers=await auth(small))
    assert answer.status_code == 201, answer.text


async def test_a_declared_length_over_the_bound_is_refused_unread(
    client: httpx.AsyncClient, small: FastAPI, db: asyncpg.Connection
) -> None:
    answer = await client.post(
        "/api/v1/rules", json=rule("x" * LIMIT), headers=await auth(small, Scope.WRITE)
    )
    body = problem(answer, 413, "payload_too_large")
    assert str(LIMIT) in body["detail"]
    assert answer.headers["x-request-id"] and answer.headers["x-content-type-options"]
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


async def test_a_chunked_body_is_refused_once_it_crosses_the_bound(
    client: httpx.AsyncClient, small: FastAPI, db: asyncpg.Connection
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"kind": "welcome", "name": "big", "match": {}, "content": {"text": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}}'

    headers = await auth(small, Scope.WRITE) | {"content-type": "application/json"}
    answer = await client.post("/api/v1/rules", content=chunks(), headers=headers)
    problem(answer, 413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM rules") == 0


async def test_an_upload_may_be_as_large_as_wecom_takes_and_no_larger(
    client: httpx.AsyncClient, small: FastAPI
) -> None:
    headers = await auth(small, Scope.WRITE)
    too_large = MAX_BYTES["file"] + (1 << 20)
    answer = await client.post(
        "/api/v1/media",
        files={"file": ("big.pdf", b"%PDF" + b"0" * too_large, "application/pdf")},
        data={"kind": "file"},
        headers=headers,
    )
    problem(answer, 413, "payload_too_large")
    # Past the JSON bound, within WeCom's: the upload route reads it (and judges the file).
    answer = await client.post(
        "/api/v1/media",
        files={"file": ("small.pdf", b"%PDF-1.4\n" + b"0" * (LIMIT * 2), "application/pdf")},
        data={"kind": "file"},
        headers=headers,
    )
    assert answer.status_code != 413, answer.text
