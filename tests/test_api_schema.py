"""Every operation of the live OpenAPI schema, fuzzed by schemathesis in-process on a real
Postgres: no 5xx, and no answer the schema does not describe (status, content type, body,
headers), for valid and invalid requests, with and without an API key.

Each operation gets a fresh database holding what the schema's examples name, so item
routes answer with real rows as well as 404: the app `shop`, a customer, a group, an app
message, the events that made them and the actions they queued, a welcome rule, a spare key.
"""

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, assume, settings

from app.api.pagination import InvalidCursor, decode_cursor, encode_cursor
from app.apikeys import Scope, create_key
from app.automations.store import create_rule, rule_spec
from app.config import Settings
from app.main import create_app
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact, event_xml, text_message
from tests.api_helpers import bearer, hub_state, problem
from tests.conftest import RegisteredApp, Simulator, random_app, register
from tests.processing_helpers import deliver, drain

# GET /openapi.json serves this app's openapi(); the schema needs no lifespan (no database).
_SCHEMA_SOURCE = create_app(Settings(_env_file=None))

schema = schemathesis.openapi.from_dict(
    _SCHEMA_SOURCE.openapi(),
    config=schemathesis.Config.from_dict(
        {
            # The same cases on every run, and few enough for CI: about 25 s in all.
            "seed": 1,
            "generation": {"max-examples": 20, "deterministic": True, "database": "none"},
            "checks": {
                # A schema cannot say which app slugs exist, which cursors this API gave
                # out or which files WeCom takes: such schema-valid requests are refused
                # with 400 or 422, as they must be. Every other check runs.
                "positive_data_acceptance": {"enabled": False},
            },
        }
    ),
)
schema.app = _SCHEMA_SOURCE  # calls go over ASGI, in-process; each names its own app

CUSTOMER = "wmqfasd1e19278asdf8tB-vtTEh3SQ3Q"  # the examples' ids
CHAT = "wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA"
REVOKE = "DELETE /api/v1/apikeys/{key_id}"


@pytest.fixture
async def shop(settings: Settings, hub: FastAPI) -> RegisteredApp:
    app = random_app("shop")
    await register(settings, app)
    return app


@pytest.fixture
async def seeded(client: httpx.AsyncClient, hub: FastAPI, shop: RegisteredApp) -> None:
    """Rows made the way production makes them: callbacks stored over HTTP, then projected
    by the event processor, which queues the WeCom calls they cause as pending actions."""
    for message in [
        add_external_contact(
            corp_id=shop.corp_id,
            user_id="zhangsan",
            external_user_id=CUSTOMER,
            state="store_sh",
            welcome_code="code",
        ),
        event_xml(shop.corp_id, "change_external_chat", {"ChatId": CHAT, "ChangeType": "create"}),
        text_message(
            corp_id=shop.corp_id,
            from_user="zhangsan",
            content="你好",
            msg_id="m1",
            create_time=int(time.time()),
        ),
    ]:
        await deliver(client, shop, message)
    await drain(EventProcessor(hub_state(hub).sessionmaker, worker="seed"))
    spec = rule_spec(
        {
            "app": "shop",
            "kind": "welcome",
            "name": "sh",
            "match": {"state": "store_sh"},
            "content": {"text": "你好 {customer_name}"},
        }
    )
    async with hub_state(hub).sessionmaker.begin() as session:
        await create_rule(session, spec, media_dir=None, paths=False)
        await create_key(session, name="spare", scope=Scope.READ)  # one to revoke


@dataclass(frozen=True)
class Admin:
    key_id: int
    headers: dict[str, str]


@pytest.fixture
async def admin(hub: FastAPI, seeded: None) -> Admin:
    async with hub_state(hub).sessionmaker.begin() as session:
        view, key = await create_key(session, name="schemathesis", scope=Scope.ADMIN)
    return Admin(view.id, bearer(key))


@pytest.fixture
def api(settings: Settings, seeded: None, shop: RegisteredApp, simulator: Simulator) -> FastAPI:
    """The app schemathesis calls: its lifespan runs on schemathesis's event loop, started by
    the first call and ended with the test by schemathesis's pytest plugin. WeCom is the
    simulator, knowing the shop's corp and member: the calls a request waits on (a channel's
    add_contact_way) answer as WeCom would, a refusal included, never as a network error."""
    simulator.state.corp(shop.corp_id).secrets.add(shop.secret)
    simulator.state.seed(shop.corp_id, members=1, customers_per_member=0, groups=1, tags=1)
    configured = settings.model_copy(update={"wecom_api_base_url": simulator.url})
    return create_app(configured, database_url=configured.database_url)


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # shared on purpose
def test_api(case: schemathesis.Case[Any], api: FastAPI, admin: Admin) -> None:
    # Revoking the key that makes the calls would leave the other cases unauthorised.
    revoked = (case.path_parameters or {}).get("key_id")
    assume(case.operation.label != REVOKE or str(revoked) != str(admin.key_id))
    # Some cases leave the key out on purpose, to be refused with 401.
    anonymous = case.operation.schema.is_security_param_negated(case)
    case.call_and_validate(app=api, headers=None if anonymous else admin.headers)


@pytest.mark.parametrize("forged", [2**63, -(2**63) - 1])
async def test_a_forged_cursor_key_is_refused_not_a_server_error(
    client: httpx.AsyncClient, admin: Admin, forged: int
) -> None:
    """A cursor's format is no secret: one whose id Postgres cannot take as a bigint must be
    refused before the query, which would fail in asyncpg."""
    first = await client.get("/api/v1/events", params={"limit": 1}, headers=admin.headers)
    cursor = first.json()["next_cursor"]
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged_cursor = base64.urlsafe_b64encode(json.dumps({**raw, "k": [forged]}).encode())
    answer = await client.get(
        "/api/v1/events",
        params={"limit": 1, "cursor": forged_cursor.decode()},
        headers=admin.headers,
    )
    problem(answer, 400, "invalid_cursor")


@pytest.mark.parametrize("text", ["a\x00b", "\ud800"])
def test_a_cursor_key_text_postgres_cannot_hold_is_refused(text: str) -> None:
    """NUL, and a lone surrogate (a JSON escape allows both), fail in Postgres or asyncpg."""
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(["etA", text], {}), {})
