"""/api/v1/rules, /api/v1/apps and /api/v1/media: the automations' own validation over HTTP
(422 naming the field), secrets that never come back, and attachment files uploaded instead
of read from the server's disk."""

import json

import httpx
from fastapi import FastAPI

from app.apikeys import Scope
from tests.api_helpers import auth, problem
from tests.conftest import RegisteredApp, random_app

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_rules_round_trip_with_the_clis_validation(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.WRITE)
    rule = {
        "kind": "welcome",
        "name": "stores",
        "app": wecom_app.slug,
        "match": {"state": "store_", "state_mode": "prefix"},
        "content": {"text": "欢迎光临，{customer_name}"},
    }
    created = await client.post("/api/v1/rules", json=rule, headers=headers)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    assert (created.json()["app"], created.json()["enabled"]) == (wecom_app.slug, True)

    listed = (await client.get("/api/v1/rules", params={"kind": "welcome"}, headers=headers)).json()
    assert [r["id"] for r in listed["data"]] == [rule_id]
    patched = await client.patch(
        f"/api/v1/rules/{rule_id}", json={"enabled": False}, headers=headers
    )
    assert (patched.status_code, patched.json()["enabled"]) == (200, False)
    assert (await client.get(f"/api/v1/rules/{rule_id}", headers=headers)).json()[
        "enabled"
    ] is False

    hostile = {**rule, "name": "hostile", "content": {"text": "{customer_name:>300000000}"}}
    body = problem(
        await client.post("/api/v1/rules", json=hostile, headers=headers), 422, "validation_failed"
    )
    assert [e["field"] for e in body["errors"]] == ["content.text"]
    assert "format spec" in body["errors"][0]["message"]

    deleted = await client.delete(f"/api/v1/rules/{rule_id}", headers=headers)
    assert deleted.status_code == 204
    problem(await client.get(f"/api/v1/rules/{rule_id}", headers=headers), 404, "rule_not_found")
    read_only = await auth(hub, Scope.READ)
    problem(
        await client.post("/api/v1/rules", json=rule, headers=read_only), 403, "insufficient_scope"
    )


async def test_attachments_are_uploaded_never_read_from_the_servers_disk(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.WRITE)
    rule = {
        "kind": "welcome",
        "name": "poster",
        "match": {},
        "content": {"text": "hi", "attachments": [{"msgtype": "image", "file": "secret.key"}]},
    }
    body = problem(
        await client.post("/api/v1/rules", json=rule, headers=headers), 422, "validation_failed"
    )
    assert body["errors"][0]["field"] == "content.attachments.0.file"
    assert "POST /api/v1/media" in body["errors"][0]["message"]

    uploaded = await client.post(
        "/api/v1/media",
        data={"kind": "image"},
        files={"file": ("poster.png", PNG, "image/png")},
        headers=headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    media = uploaded.json()
    assert (media["kind"], media["filename"], media["size"]) == ("image", "poster.png", len(PNG))
    attachment = {"msgtype": "image", "sha256": media["id"]}
    rule["content"] = {"text": "hi", "attachments": [attachment]}
    created = await client.post("/api/v1/rules", json=rule, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["content"]["attachments"][0]["file"] == "poster.png"

    rule["name"] = "ghost"
    rule["content"] = {"text": "hi", "attachments": [{"msgtype": "image", "sha256": "0" * 64}]}
    body = problem(
        await client.post("/api/v1/rules", json=rule, headers=headers), 422, "validation_failed"
    )
    assert body["errors"][0]["field"] == "content.attachments.0.sha256"

    for name, content in (("poster.gif", PNG), ("tiny.png", b"\x89PN"), ("big.png", PNG * 200_000)):
        refused = await client.post(
            "/api/v1/media",
            data={"kind": "image"},
            files={"file": (name, content, "image/png")},
            headers=headers,
        )
        assert problem(refused, 422, "validation_failed")["errors"][0]["field"] == "file"


async def test_apps_never_show_a_secret(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    headers = await auth(hub, Scope.ADMIN)
    new = random_app("shop")
    spec = {
        "slug": new.slug,
        "corp_id": new.corp_id,
        "token": new.token,
        "aes_key": new.aes_key,
        "secret": new.secret,
        "agent_id": 1000002,
    }
    created = await client.post("/api/v1/apps", json=spec, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["callback_path"] == "/callback/shop"
    listed = await client.get("/api/v1/apps", headers=headers)
    shown = json.dumps([created.json(), listed.json()])
    for secret in (new.token, new.aes_key, new.secret):
        assert secret not in shown
    assert [a["slug"] for a in listed.json()["data"]] == ["demo", "shop"]

    problem(await client.post("/api/v1/apps", json=spec, headers=headers), 409, "app_exists")
    body = problem(
        await client.post(
            "/api/v1/apps", json={**spec, "slug": "other", "aes_key": "short"}, headers=headers
        ),
        422,
        "validation_failed",
    )
    assert [e["field"] for e in body["errors"]] == ["aes_key"]

    renamed = await client.patch("/api/v1/apps/shop", json={"label": "门店"}, headers=headers)
    assert (renamed.status_code, renamed.json()["label"]) == (200, "门店")
    assert (await client.delete("/api/v1/apps/shop", headers=headers)).status_code == 204
    problem(await client.get("/api/v1/apps/shop", headers=headers), 404, "unknown_app")
    write = await auth(hub, Scope.WRITE)
    problem(await client.get("/api/v1/apps", headers=write), 403, "insufficient_scope")


async def test_an_upload_of_another_kind_cannot_be_named(
    hub: FastAPI, client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    """A 20 MB `file` named as an image would fail at WeCom on every welcome."""
    headers = await auth(hub, Scope.WRITE)
    uploaded = await client.post(
        "/api/v1/media",
        data={"kind": "file"},
        files={"file": ("price.pdf", b"%PDF-1.4 " * 10, "application/pdf")},
        headers=headers,
    )
    rule = {
        "kind": "welcome",
        "name": "wrong kind",
        "match": {},
        "content": {"attachments": [{"msgtype": "image", "sha256": uploaded.json()["id"]}]},
    }
    body = problem(
        await client.post("/api/v1/rules", json=rule, headers=headers), 422, "validation_failed"
    )
    assert body["errors"] == [
        {
            "field": "content.attachments.0.sha256",
            "message": "names an upload of kind file; a image attachment needs kind image",
        }
    ]
