"""Every kind of answer carries the security headers (app/routers/security_headers.py):
callbacks accepted and refused, the API, health, metrics, the docs page and its assets,
and the framework's own 404 and 405."""

import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI

from app.simulator.callbacks import build_callback, build_url_verification, text_message
from tests.api_helpers import auth
from tests.conftest import RegisteredApp
from tests.test_docs_offline import _AssetLinks

Request = Callable[[httpx.AsyncClient, FastAPI, RegisteredApp], Awaitable[httpx.Response]]


def _common(headers: httpx.Headers) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


async def _url_verified(c: httpx.AsyncClient, _: FastAPI, app: RegisteredApp) -> httpx.Response:
    return await c.get(f"/callback/{app.slug}", params=build_url_verification(app.crypt, "e"))


async def _delivered(c: httpx.AsyncClient, _: FastAPI, app: RegisteredApp) -> httpx.Response:
    message = text_message(corp_id=app.corp_id, from_user="u", content="hi", msg_id="1")
    callback = build_callback(app.crypt, message)
    return await c.post(f"/callback/{app.slug}", params=callback.params, content=callback.body)


async def _api_ok(c: httpx.AsyncClient, hub: FastAPI, _: RegisteredApp) -> httpx.Response:
    return await c.get("/api/v1/apps", headers=await auth(hub))


ANSWERS: dict[str, tuple[Request, int]] = {
    "callback url verified": (_url_verified, 200),
    "callback stored": (_delivered, 200),
    "callback unknown app": (
        lambda c, _h, _a: c.post(
            "/callback/nobody", params={"msg_signature": "0", "timestamp": "1", "nonce": "1"}
        ),
        404,
    ),
    "callback bad signature": (
        lambda c, _h, a: c.get(
            f"/callback/{a.slug}",
            params={"msg_signature": "0", "timestamp": "1", "nonce": "1", "echostr": "x"},
        ),
        403,
    ),
    "healthz": (lambda c, _h, _a: c.get("/healthz"), 200),
    "readyz": (lambda c, _h, _a: c.get("/readyz"), 200),
    "metrics": (lambda c, _h, _a: c.get("/metrics"), 200),
    "openapi": (lambda c, _h, _a: c.get("/openapi.json"), 200),
    "docs asset": (lambda c, _h, _a: c.get("/docs/assets/swagger-ui.css"), 200),
    "no such route": (lambda c, _h, _a: c.get("/nothing-here"), 404),
    "wrong method": (lambda c, _h, _a: c.delete("/healthz"), 405),
}


@pytest.mark.parametrize("name", ANSWERS)
async def test_every_kind_of_answer_carries_the_headers(
    name: str, client: httpx.AsyncClient, hub: FastAPI, wecom_app: RegisteredApp
) -> None:
    request, status = ANSWERS[name]
    response = await request(client, hub, wecom_app)
    assert response.status_code == status, response.text
    _common(response.headers)
    assert response.headers["content-security-policy"].startswith("default-src 'none';")
    assert "cache-control" not in response.headers


@pytest.mark.parametrize("path", ["/api/v1/apps", "/api/v1/no-such-thing"])
async def test_api_answers_are_never_cached(
    path: str, client: httpx.AsyncClient, hub: FastAPI
) -> None:
    for headers in ({}, await auth(hub)):
        response = await client.get(path, headers=headers)
        _common(response.headers)
        assert response.headers["cache-control"] == "no-store", (path, response.status_code)


async def test_the_docs_policy_allows_exactly_what_the_page_loads(
    client: httpx.AsyncClient,
) -> None:
    """No browser here: the page's assets are all same-origin paths, which `'self'` covers,
    and it has inline script, which the policy must allow or Swagger UI never starts."""
    page = await client.get("/docs")
    assert page.status_code == 200
    _common(page.headers)
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["content-security-policy"].split(";")
    )
    links = _AssetLinks()
    links.feed(page.text)
    assert links.urls and all(url.startswith("/docs/assets/") for url in links.urls)
    assert "'self'" in policy["script-src"] and "'self'" in policy["style-src"]
    assert "'self'" in policy["img-src"]
    assert re.search(r"<script>\s*const ui = SwaggerUIBundle", page.text)
    assert "'unsafe-inline'" in policy["script-src"]
    assert "'self'" in policy["connect-src"]  # fetches /openapi.json
    assert policy["default-src"] == "'none'"
