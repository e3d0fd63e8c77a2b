"""The callback endpoint over HTTP on a real Postgres: what WeCom sees, what gets stored."""

import asyncio
import json
import logging
import time
from urllib.parse import parse_qsl

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from app.callbacks import safexml
from app.config import Settings
from app.routers.callback import _query
from app.simulator.callbacks import (
    add_external_contact,
    build_callback,
    build_url_verification,
    text_message,
)
from tests.conftest import RegisteredApp, random_app, register


async def _events(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM events ORDER BY id")


def _counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("wecom_hub_callbacks_total", {"outcome": outcome}) or 0.0


async def test_url_verification_answers_the_raw_plaintext(
    client: httpx.AsyncClient, wecom_app: RegisteredApp
) -> None:
    params = build_url_verification(wecom_app.crypt, "1616140317555161061")
    response = await client.get(f"/callback/{wecom_app.slug}", params=params)
    assert response.status_code == 200
    assert response.content == b"1616140317555161061"  # no quotes, no newline
    assert response.headers["content-type"].startswith("text/plain")


async def test_callbacks_are_answered_under_a_proxy_prefix(
    hub: FastAPI, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Mounted under /hub by a reverse proxy (`--root-path /hub`): the prefix is not part
    of the callback's route, as for every other route."""
    transport = httpx.ASGITransport(app=hub, root_path="/hub")
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as prefixed:
        params = build_url_verification(wecom_app.crypt, "42")
        verified = await prefixed.get(f"/hub/callback/{wecom_app.slug}", params=params)
        message = text_message(
            corp_id=wecom_app.corp_id, from_user="lisi", content="你好", msg_id="m-hub"
        )
        callback = build_callback(wecom_app.crypt, message)
        stored = await prefixed.post(
            f"/hub/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
    assert (verified.status_code, verified.content) == (200, b"42")
    assert (stored.status_code, stored.content) == (200, b"success")
    assert await db.fetchval("SELECT count(*) FROM events WHERE msg_id = 'm-hub'") == 1


async def test_a_delivery_is_stored_with_everything_an_operator_needs(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    message = text_message(
        corp_id=wecom_app.corp_id,
        from_user="ChenJiaShun",
        content="你好 😀",
        msg_id="1456453720",
        create_time=1700000000,
    )
    callback = build_callback(wecom_app.crypt, message, agent_id="1000002")
    response = await client.post(
        f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
    )
    assert (response.status_code, response.text) == (200, "success")

    [event] = await _events(db)
    assert event["app_id"] == await db.fetchval(
        "SELECT id FROM apps WHERE slug = $1", wecom_app.slug
    )
    assert (event["family"], event["type"], event["msg_id"]) == ("message", "text", "1456453720")
    assert event["dedup_key"] == "msg:1456453720"
    assert event["create_time"].timestamp() == 1700000000
    assert event["raw_body"] == callback.body.decode()
    # The body as received is the evidence: with the app's key it gives back the message,
    # which is not stored a second time (ADR 0008).
    assert event["xml"] is None
    encrypted = safexml.parse_envelope(event["raw_body"].encode())
    assert encrypted is not None
    assert wecom_app.crypt.decrypt(encrypted).decode() == message
    assert json.loads(event["payload"])["Content"] == "你好 😀"
    assert event["status"] == "pending"


async def test_three_concurrent_deliveries_store_one_event_and_all_get_success(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    message = add_external_contact(
        corp_id=wecom_app.corp_id,
        user_id="zhangsan",
        external_user_id="wmAAA",
        state="spring",
        welcome_code="W1",
    )
    callback = build_callback(wecom_app.crypt, message)
    responses = await asyncio.gather(
        *[
            client.post(
                f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
            )
            for _ in range(3)
        ]
    )
    assert [(r.status_code, r.text) for r in responses] == [(200, "success")] * 3
    assert len(await _events(db)) == 1


async def test_a_retry_encrypted_afresh_is_still_the_same_event(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    message = add_external_contact(
        corp_id=wecom_app.corp_id,
        user_id="zhangsan",
        external_user_id="wmAAA",
        create_time=1700000000,
    )
    before = _counter("duplicate")
    for _ in range(3):  # new random prefix, nonce and ciphertext each time
        callback = build_callback(wecom_app.crypt, message)
        response = await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
        assert response.text == "success"
    assert len(await _events(db)) == 1
    assert _counter("duplicate") - before == 2


async def test_two_customers_added_in_the_same_second_are_both_kept(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    for external_user_id in ("wmAAA", "wmBBB"):
        message = add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id=external_user_id,
            create_time=1700000000,
        )
        callback = build_callback(wecom_app.crypt, message)
        await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
    stored = [json.loads(e["payload"])["ExternalUserID"] for e in await _events(db)]
    assert stored == ["wmAAA", "wmBBB"]


@pytest.mark.serial
async def test_concurrent_callbacks_share_commits(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Group commit: 200 concurrent callbacks, all stored, in far fewer than 200 transactions."""
    batches_before = REGISTRY.get_sample_value("wecom_hub_ingest_batch_size_count") or 0.0
    callbacks = [
        build_callback(
            wecom_app.crypt,
            text_message(corp_id=wecom_app.corp_id, from_user="u", content=str(i), msg_id=f"m{i}"),
        )
        for i in range(200)
    ]
    responses = await asyncio.gather(
        *[
            client.post(f"/callback/{wecom_app.slug}", params=c.params, content=c.body)
            for c in callbacks
        ]
    )
    assert {r.text for r in responses} == {"success"}
    assert await db.fetchval("SELECT count(*) FROM events") == 200
    batches = (
        REGISTRY.get_sample_value("wecom_hub_ingest_batch_size_count") or 0.0
    ) - batches_before
    assert 0 < batches < 100


async def test_each_app_verifies_with_its_own_keys(
    client: httpx.AsyncClient, settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    other = random_app("other-corp")
    await register(settings, other)
    callback = build_callback(
        other.crypt, text_message(corp_id=other.corp_id, from_user="u", content="x", msg_id="1")
    )

    wrong = await client.post(
        f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
    )
    assert (wrong.status_code, wrong.json()["code"]) == (403, "bad_signature")
    right = await client.post("/callback/other-corp", params=callback.params, content=callback.body)
    assert right.text == "success"
    [event] = await _events(db)
    assert event["app_id"] == await db.fetchval("SELECT id FROM apps WHERE slug = 'other-corp'")


async def test_timestamp_window_zero_accepts_old_callbacks(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    from app.main import create_app

    relaxed = settings.model_copy(update={"callback_timestamp_window": 0})
    app = create_app(relaxed, database_url=relaxed.database_url)
    callback = build_callback(
        wecom_app.crypt,
        text_message(corp_id=wecom_app.corp_id, from_user="u", content="x", msg_id="1"),
        timestamp=1476422779,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        response = await client.post(
            f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
        )
    assert response.text == "success"


async def test_answers_in_milliseconds(client: httpx.AsyncClient, wecom_app: RegisteredApp) -> None:
    """A sanity bound far below WeCom's 5 s; real figures come from bench/ingest.py."""
    callback = build_callback(
        wecom_app.crypt,
        text_message(corp_id=wecom_app.corp_id, from_user="u", content="x", msg_id="1"),
    )
    started = time.perf_counter()
    response = await client.post(
        f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
    )
    assert response.text == "success"
    assert time.perf_counter() - started < 1.0


async def test_an_operator_sees_at_info_that_callbacks_arrive(
    client: httpx.AsyncClient, wecom_app: RegisteredApp, caplog: pytest.LogCaptureFixture
) -> None:
    """URL verification passing, then each app's first callback since start, once: what an
    operator connecting a real app looks for, without a line per callback."""
    with caplog.at_level(logging.INFO, logger="app.routers.callback"):
        params = build_url_verification(wecom_app.crypt, "1")
        assert (await client.get(f"/callback/{wecom_app.slug}", params=params)).text == "1"
        for msg_id in ("1", "2"):
            xml = text_message(
                corp_id=wecom_app.corp_id, from_user="u", content="secret words", msg_id=msg_id
            )
            callback = build_callback(wecom_app.crypt, xml)
            response = await client.post(
                f"/callback/{wecom_app.slug}", params=callback.params, content=callback.body
            )
            assert response.text == "success"
    lines = [
        (r.levelno, r.getMessage(), getattr(r, "app", None), getattr(r, "type", None))
        for r in caplog.records
    ]
    assert lines == [
        (logging.INFO, "callback URL verified", wecom_app.slug, None),
        (logging.INFO, "first callback from app since start", wecom_app.slug, "text"),
    ]
    assert "secret words" not in caplog.text


@given(query=st.lists(st.sampled_from(["msg_signature", "=", "&", "a", "1", "%2B", "+", "é", ""])))
def test_the_query_is_read_as_parse_qsl_reads_it(query: list[str]) -> None:
    """The callback's own reading of its query (no decoding when there is nothing to decode)
    against the standard library's, which Starlette's query_params also use."""
    text = "".join(query)
    scope = {"query_string": text.encode()}
    expected = dict(parse_qsl(text.encode().decode("latin-1"), keep_blank_values=True))
    assert _query(scope) == expected
