"""Every error answer is RFC 9457 problem+json with a stable code: routing's, the services'
(AppError), request validation's, a database outage's and a bug's."""

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, field_validator
from sqlalchemy import text

from app.config import Settings
from app.db import create_engine
from app.errors import AppError, Conflict, FieldError, Forbidden, Invalid, NotFound, Unauthorized
from app.routers import problems

PROBLEM_JSON = "application/problem+json"


def _problem(status: int, code: str, title: str, detail: str, instance: str) -> dict[str, Any]:
    return {
        "type": f"urn:wecom-hub:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }


class Content(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class Rule(BaseModel):
    content: Content


RAISED: dict[str, AppError] = {
    "plain": AppError("cannot do that"),
    "invalid": Invalid([FieldError("match.state", "at most 64 characters")]),
    "unauthorized": Unauthorized("no API key"),
    "forbidden": Forbidden("key lacks scope rules:write"),
    "not_found": NotFound("no rule 7", code="rule_not_found"),
    "conflict": Conflict("a sync is running", extra={"running_since": "2026-11-29T05:00:00Z"}),
}


def _probe_app(settings: Settings) -> FastAPI:
    """A FastAPI app with nothing but the handlers and routes that fail on purpose."""
    app = FastAPI()
    problems.install(app)

    @app.get("/raise/{name}")
    async def raise_app_error(name: str) -> None:
        raise RAISED[name]

    @app.get("/rules")
    async def list_rules(limit: Annotated[int, Query(ge=1, le=250)] = 50) -> int:
        return limit

    @app.post("/rules")
    async def add_rule(rule: Rule) -> Rule:
        return rule

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("password=hunter2 leaked into an exception")

    @app.get("/database")
    async def database() -> None:
        nothing_listens = "postgresql+asyncpg://postgres@127.0.0.1:1/postgres"
        engine = create_engine(nothing_listens, settings, pool_size=1)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    return app


@pytest.fixture
async def probe(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """raise_app_exceptions stays on: an error answered by a handler never reaches the
    server, and a test that lets one through fails."""
    transport = httpx.ASGITransport(app=_probe_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://wecom-hub.test") as c:
        yield c


def _assert_problem(response: httpx.Response, expected: dict[str, Any]) -> None:
    assert response.status_code == expected["status"]
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == expected


async def test_unknown_route_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/route")
    _assert_problem(
        response, _problem(404, "not_found", "Not found", "Not Found", "/no/such/route")
    )


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/healthz", {"GET"}), ("PUT", "/callback/demo", {"GET", "HEAD", "POST"})],
)
async def test_wrong_method_names_the_allowed_ones(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    expected = _problem(405, "method_not_allowed", "Method not allowed", "Method Not Allowed", path)
    _assert_problem(response, expected)
    assert set(response.headers["allow"].split(", ")) == allowed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plain", _problem(400, "bad_request", "Bad request", "cannot do that", "/raise/plain")),
        (
            "invalid",
            _problem(
                422,
                "validation_failed",
                "Validation failed",
                "match.state: at most 64 characters",
                "/raise/invalid",
            )
            | {"errors": [{"field": "match.state", "message": "at most 64 characters"}]},
        ),
        (
            "unauthorized",
            _problem(401, "unauthorized", "Unauthorized", "no API key", "/raise/unauthorized"),
        ),
        (
            "forbidden",
            _problem(
                403, "forbidden", "Forbidden", "key lacks scope rules:write", "/raise/forbidden"
            ),
        ),
        (
            "not_found",
            _problem(404, "rule_not_found", "Not found", "no rule 7", "/raise/not_found"),
        ),
        (
            "conflict",
            _problem(409, "conflict", "Conflict", "a sync is running", "/raise/conflict")
            | {"running_since": "2026-11-29T05:00:00Z"},
        ),
    ],
)
async def test_app_errors_keep_status_code_and_members(
    probe: httpx.AsyncClient, name: str, expected: dict[str, Any]
) -> None:
    _assert_problem(await probe.get(f"/raise/{name}"), expected)


async def test_a_bad_query_parameter_is_named_by_its_name(probe: httpx.AsyncClient) -> None:
    response = await probe.get("/rules", params={"limit": 0})
    message = "Input should be greater than or equal to 1"
    expected = _problem(
        422, "validation_failed", "Validation failed", f"limit: {message}", "/rules"
    ) | {"errors": [{"field": "limit", "message": message}]}
    _assert_problem(response, expected)


async def test_a_bad_body_field_is_named_by_its_dotted_path(probe: httpx.AsyncClient) -> None:
    response = await probe.post("/rules", json={"content": {"text": "  "}})
    expected = _problem(
        422, "validation_failed", "Validation failed", "content.text: must not be blank", "/rules"
    ) | {"errors": [{"field": "content.text", "message": "must not be blank"}]}
    _assert_problem(response, expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"content":', "invalid JSON at character 11: Expecting value"),
        (b"", "Field required"),
    ],
)
async def test_a_broken_body_is_named_body(
    probe: httpx.AsyncClient, body: bytes, message: str
) -> None:
    response = await probe.post(
        "/rules", content=body, headers={"content-type": "application/json"}
    )
    expected = _problem(
        422, "validation_failed", "Validation failed", f"body: {message}", "/rules"
    ) | {"errors": [{"field": "body", "message": message}]}
    _assert_problem(response, expected)


async def test_a_bug_is_a_500_that_tells_nothing_but_logs_everything(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Starlette re-raises a 500 to the server after answering it; the server logs it.
    transport = httpx.ASGITransport(app=_probe_app(settings), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://wecom-hub.test") as c:
        with caplog.at_level(logging.ERROR, logger="app.routers.problems"):
            response = await c.get("/bug")

    expected = _problem(
        500,
        "internal_error",
        "Internal server error",
        "unexpected error; it is logged on the server",
        "/bug",
    )
    _assert_problem(response, expected)
    assert "hunter2" not in response.text and "Traceback" not in response.text
    [record] = caplog.records
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])
    assert getattr(record, "path", None) == "/bug"


async def test_an_unreachable_database_is_a_503_and_a_warning(
    probe: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.routers.problems"):
        response = await probe.get("/database")

    expected = _problem(
        503,
        "database_unavailable",
        "Service unavailable",
        "database unreachable; retry later",
        "/database",
    )
    _assert_problem(response, expected)
    [record] = caplog.records
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
