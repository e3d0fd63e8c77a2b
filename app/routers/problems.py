"""Every error the HTTP service answers is RFC 9457 `application/problem+json`:

    {"type": "urn:wecom-hub:problem:not_found", "title": "Not found", "status": 404,
     "detail": "no rule 7", "instance": "/api/rules/7", "code": "not_found"}

plus `errors: [{"field", "message"}]` on a 422 and any members the error adds (a callback
rejection's `wecom_code`). `code` is what a client branches on; `title` and `detail` are for
people.

`type` is a URN, not a URL: RFC 9457 only needs it to identify the problem type, and a URN
says so. A URL invites fetching, would break the day a documentation site moves, and points
nowhere on the closed networks this service often runs in.

What each error becomes:

    AppError                       its status, code, title, detail, errors and extra
    HTTPException (Starlette's)    404 not_found, 405 method_not_allowed (Allow kept), …
    RequestValidationError         422 validation_failed, one FieldError per problem
    database unreachable           503 database_unavailable, a warning without traceback
    anything else                  500 internal_error, logged with its traceback

Starlette hands the `Exception` handler to ServerErrorMiddleware, which answers and then
re-raises to the server, so the server logs those a second time. A database outage is
expected, not a bug: its classes get their own handlers, which answer and stop.
"""

import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.db import UNAVAILABLE_ERRORS, is_unavailable
from app.errors import AppError, ErrorCode, FieldError, Invalid

log = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Every class that is_unavailable() can say yes to.
_DATABASE_ERRORS = (*UNAVAILABLE_ERRORS, DBAPIError)


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


# A problem's body in the OpenAPI schema, inline rather than a model: FastAPI files a
# response `model` under application/json, and every problem is application/problem+json.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "required": ["type", "title", "status", "detail", "instance", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:wecom-hub:problem:not_found"]},
        "title": {"type": "string", "examples": ["Not found"]},
        "status": {"type": "integer", "examples": [404]},
        "detail": {"type": "string", "examples": ["no rule 7"]},
        "instance": {"type": "string", "examples": ["/api/v1/rules/7"]},
        "code": {
            "type": "string",
            "description": "What a client branches on; never renamed once published.",
            "examples": ["not_found"],
        },
        "errors": {
            "type": "array",
            "description": "On a 422: each refused field, by its name or dotted path.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router or a route: each status, answered as a problem."""
    return {
        status: {
            "description": title_for(status),
            "content": {ProblemResponse.media_type: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def problem_type(code: str) -> str:
    return f"urn:wecom-hub:problem:{code}"


def title_for(status: int) -> str:
    """The status phrase in sentence case, as AppError's titles are: one `not_found` problem
    has one title, whether routing or a service raised it."""
    return HTTPStatus(status).phrase.capitalize()


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """`errors` is a member whenever it is given, even empty. `extra` adds members of our own
    (`wecom_code`); a standard member's name there is a bug (Python refuses all but `type`)."""
    body = problem_body(status, code, title, detail, instance=instance, errors=errors, **extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str,
    errors: Sequence[FieldError] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A problem's members, for an answer rendered without a Response (the callback's)."""
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    body.update(extra)
    return body


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for database_error in _DATABASE_ERRORS:
        app.add_exception_handler(database_error, _server_error)
    app.add_exception_handler(Exception, _server_error)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        exc.status,
        exc.code,
        exc.title,
        exc.detail,
        instance=request.url.path,
        errors=exc.errors if exc.errors or isinstance(exc, Invalid) else None,
        headers=exc.headers or None,
        **exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Routing's 404 and 405, and any HTTPException a library raises: the code is the status
    phrase in snake_case: 413 is `request_entity_too_large`."""
    assert isinstance(exc, HTTPException)
    title = title_for(exc.status_code)
    code = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return problem_response(
        exc.status_code,
        code,
        title,
        str(exc.detail),
        instance=request.url.path,
        headers=headers,
    )


def _allowed_methods(request: Request) -> str:
    """Every method the path takes: Starlette's 405 names only those of the first route
    whose path matched, and FastAPI makes a route per method (GET and POST /api/v1/rules)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _app_error(request, Invalid([_field_error(e) for e in exc.errors()]))


def _field_error(error: Mapping[str, Any]) -> FieldError:
    """A parameter by its name (`limit`), a body field by its dotted path (`content.text`):
    FastAPI's leading `query`/`path`/`header`/`body` says nothing a client needs. The body as
    a whole is `body`; for broken JSON, FastAPI's second loc is a character offset."""
    where, *path = error["loc"]
    if error["type"] == "json_invalid":
        return FieldError("body", f"invalid JSON at character {path[0]}: {error['ctx']['error']}")
    field = ".".join(str(part) for part in path) or str(where)
    return FieldError(field, str(error["msg"]).removeprefix("Value error, "))


def _bad_value(exc: BaseException) -> bool:
    """A data exception (SQLSTATE class 22) from Postgres, or asyncpg refusing to encode a
    parameter, anywhere in the chain SQLAlchemy wraps around it."""
    seen: BaseException | None = exc
    while seen is not None:
        sqlstate = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("22"):
            return True
        if isinstance(seen, asyncpg.exceptions.DataError):  # encoding a parameter failed
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    body = last_resort(exc, path=request.url.path, method=request.method)
    return ProblemResponse(body, status_code=body["status"])


def last_resort(exc: Exception, *, path: str, method: str) -> dict[str, Any]:
    """The problem for an exception nothing else handled, for the API and the callback
    (app/routers/callback.py) alike: an outage is a 503 and a warning without traceback, a
    value Postgres refuses a 400, anything else a bug, a 500 logged with its traceback. The
    detail never carries the exception's text: it may hold SQL, paths or secrets."""
    if is_unavailable(exc):
        log.warning(
            "database unavailable",
            extra={"path": path, "method": method, "error": type(exc).__name__},
        )
        return problem_body(
            503,
            ErrorCode.DATABASE_UNAVAILABLE,
            title_for(503),
            "database unreachable; retry later",
            instance=path,
        )
    if _bad_value(exc):
        # Postgres refused a value the request carried (a NUL character, a number beyond
        # bigint): the caller's mistake, not ours.
        return problem_body(
            400,
            ErrorCode.INVALID_PARAMETER,
            title_for(400),
            "a parameter holds a value the database cannot take (a NUL character, or a"
            " number out of range)",
            instance=path,
        )
    log.error("unexpected error", exc_info=exc, extra={"path": path, "method": method})
    return problem_body(
        500,
        ErrorCode.INTERNAL_ERROR,
        title_for(500),
        "unexpected error; it is logged on the server",
        instance=path,
    )
