"""The WeCom client against the simulator over real HTTP, with tokens shared in Postgres."""

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from app import logs
from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import create_engine, create_sessionmaker
from app.simulator.state import Contact, Fault
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom.factory import open_client
from app.wecom.ratelimit import NoSlotInTime, RateLimiter, Window
from tests.conftest import Simulator

CORP, SECRET = "wwsimcorp000000001", "corp-secret-for-tests"
CREDENTIALS = Credentials(CORP, SECRET)


@pytest.fixture
async def client(
    settings: Settings, simulator: Simulator, db: asyncpg.Connection
) -> AsyncIterator[WecomClient]:
    simulator.state.corp(CORP).secrets.add(SECRET)
    simulator.state.corp(CORP).contacts["wmA"] = Contact("wmA", "李四")
    configured = settings.model_copy(update={"wecom_api_base_url": simulator.url})
    assert configured.database_url and configured.secret_key
    engine = create_engine(configured.database_url, configured, pool_size=4)
    box = SecretBox(parse_key(configured.secret_key.get_secret_value()))
    async with open_client(configured, create_sessionmaker(engine), box) as client:
        yield client
    await engine.dispose()


def calls(simulator: Simulator, api: str) -> list[int | None]:
    return [c.errcode for c in simulator.state.calls if c.api == api]


async def get_contact(client: WecomClient, deadline: float | None = None) -> dict[str, object]:
    return await client.call(
        CREDENTIALS,
        "GET",
        "externalcontact/get",
        params={"external_userid": "wmA"},
        deadline=deadline,
    )


async def test_a_call_succeeds_and_is_recorded(
    client: WecomClient, simulator: Simulator, db: asyncpg.Connection
) -> None:
    body = await get_contact(client)
    await client.drain_records()
    contact = body["external_contact"]
    assert isinstance(contact, dict) and contact["name"] == "李四"
    recorded = await db.fetch(
        "SELECT api, errcode, http_status, latency_ms FROM api_calls ORDER BY id"
    )
    assert [(r["api"], r["errcode"], r["http_status"]) for r in recorded] == [
        ("gettoken", 0, 200),
        ("externalcontact/get", 0, 200),
    ]
    assert all(r["latency_ms"] > 0 for r in recorded)


async def test_token_fetched_once_by_four_callers_in_two_processes(
    client: WecomClient, settings: Settings, simulator: Simulator, secret_key: str
) -> None:
    assert client.tokens is not None and settings.database_url
    # gettoken answers slowly, so all four callers are waiting while the first one fetches.
    simulator.state.faults = [Fault(api="gettoken", delay=0.5)]
    start_at = time.time() + 1.5
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.token_racer",
        settings.database_url,
        secret_key,
        simulator.url,
        CORP,
        SECRET,
        str(start_at),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    ours = await asyncio.gather(*(client.tokens.token(CORP, SECRET) for _ in range(2)))
    out, err = await asyncio.wait_for(other.communicate(), 30)
    assert other.returncode == 0, err.decode()
    theirs = out.decode().split()
    assert len(set(ours + theirs)) == 1
    assert len(calls(simulator, "gettoken")) == 1


async def test_expired_token_is_refreshed_and_the_call_repeated(
    client: WecomClient, simulator: Simulator
) -> None:
    await get_contact(client)
    simulator.state.expire_tokens()  # WeCom now answers 42001 to the cached token
    await get_contact(client)
    assert calls(simulator, "externalcontact/get") == [0, 42001, 0]
    assert len(calls(simulator, "gettoken")) == 2


@pytest.mark.parametrize("errcode", [-1, 45009, 45033])
async def test_transient_errcodes_are_retried(
    client: WecomClient, simulator: Simulator, errcode: int
) -> None:
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=errcode, times=2)]
    await get_contact(client)
    assert calls(simulator, "externalcontact/get") == [errcode, errcode, 0]


async def test_http_5xx_is_retried(client: WecomClient, simulator: Simulator) -> None:
    simulator.state.faults = [Fault(api="externalcontact/get", http_status=503, times=1)]
    await get_contact(client)
    statuses = [c.http_status for c in simulator.state.calls if c.api == "externalcontact/get"]
    assert statuses == [503, 200]


@pytest.mark.parametrize("errcode", [48002, 60011, 84061])
async def test_permanent_errcodes_fail_at_once_with_the_reason(
    client: WecomClient, simulator: Simulator, errcode: int
) -> None:
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=errcode)]
    with pytest.raises(WecomApiError) as raised:
        await get_contact(client)
    assert (raised.value.errcode, raised.value.retryable) == (errcode, False)
    assert calls(simulator, "externalcontact/get") == [errcode]


async def test_retries_stop_at_the_deadline(client: WecomClient, simulator: Simulator) -> None:
    await client.tokens.token(CORP, SECRET)  # type: ignore[union-attr]
    simulator.state.faults = [Fault(api="externalcontact/get", errcode=-1)]
    started = time.monotonic()
    with pytest.raises(WecomApiError):
        await get_contact(client, deadline=started + 0.3)
    assert time.monotonic() - started < 0.3 + 0.2  # no backoff slept past the deadline


async def test_wrong_secret_fails_without_a_refresh_loop(
    client: WecomClient, simulator: Simulator
) -> None:
    with pytest.raises(WecomApiError) as raised:
        await client.call(
            Credentials(CORP, "wrong"),
            "GET",
            "externalcontact/get",
            params={"external_userid": "wmA"},
        )
    assert raised.value.errcode == 40001
    assert calls(simulator, "gettoken") == [40001]


async def test_no_secret_or_token_reaches_the_logs(
    client: WecomClient, simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("DEBUG")  # as `wecom-hub serve --log-level DEBUG` would
    root.addHandler(caplog.handler)
    try:
        await get_contact(client)
        token = await client.tokens.token(CORP, SECRET)  # type: ignore[union-attr]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert SECRET not in caplog.text and token not in caplog.text
    assert all(SECRET not in str(c.body) for c in simulator.state.calls)


async def test_unreachable_wecom_is_a_retryable_error(settings: Settings) -> None:
    async with aiohttp.ClientSession("http://127.0.0.1:9") as http:
        client = WecomClient(http, max_attempts=1)
        with pytest.raises(WecomApiError) as raised:
            await client.fetch_token(CORP, SECRET)
    assert raised.value.errcode is None and raised.value.retryable


def test_rate_window_allows_a_burst_then_waits_for_the_oldest_call_to_leave() -> None:
    """WeCom counts calls per minute: the whole minute's budget may go at once, and the
    next call fits when the first of them is a minute old."""
    window = Window(limit=3, seconds=60.0)
    for at in (100.0, 100.1, 100.2):
        assert window.wait(at) == 0.0
        window.take(at)
    assert window.wait(100.3) == pytest.approx(59.7)
    assert window.wait(160.0) == 0.0  # the call at 100.0 has left the window
    window.take(160.0)
    assert window.wait(160.05) == pytest.approx(0.05)  # next out: 100.1


async def test_rate_limiter_holds_calls_over_the_minute_budget() -> None:
    limiter = RateLimiter(per_minute=2, per_hour=100, concurrency=8)
    entered: list[str] = []

    async def call(name: str) -> None:
        async with limiter.slot("ww1", "externalcontact/get"):
            entered.append(name)

    async with limiter.slot("ww1", "other/api"), limiter.slot("ww2", "externalcontact/get"):
        pass  # budgets are per corp and API: these take nothing from ww1's
    tasks = [asyncio.create_task(call(name)) for name in ("a", "b", "c")]
    _, pending = await asyncio.wait(tasks, timeout=0.5)
    assert sorted(entered) == ["a", "b"] and len(pending) == 1
    for task in pending:
        task.cancel()


async def test_a_call_never_starts_after_its_deadline(
    client: WecomClient, simulator: Simulator
) -> None:
    """Not even a first attempt, and not after waiting for a slot under our own limits:
    a welcome must not be sent once its 20 seconds are over."""
    with pytest.raises(WecomApiError) as late:
        await get_contact(client, deadline=time.monotonic() - 0.001)
    assert late.value.errmsg == "deadline passed before the call"

    limiter = RateLimiter(per_minute=1, per_hour=100, concurrency=8)
    async with limiter.slot("ww1", "externalcontact/send_welcome_msg"):
        pass  # the minute's only call
    started = time.monotonic()
    with pytest.raises(NoSlotInTime):
        async with limiter.slot("ww1", "externalcontact/send_welcome_msg", deadline=started + 0.1):
            pytest.fail("a slot past the deadline")
    assert time.monotonic() - started < 1  # gave up at the deadline, not after a minute
    assert calls(simulator, "externalcontact/get") == []
