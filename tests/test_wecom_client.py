"""The WeCom client against the simulator over real HTTP, with tokens shared in Postgres."""

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from app import logs
from app.config import Settings
from app.crypto.at_rest import SecretBox, parse_key
from app.db import create_engine, create_sessionmaker
from app.metrics import errcode_label
from app.simulator.state import Contact, Fault
from app.wecom.client import CallRecord, Credentials, WecomClient
from app.wecom.errors import WecomApiError, redact
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
        # Every pause after the -1 (1-3 s) would end past the deadline: none is slept.
        await client.call(
            CREDENTIALS,
            "GET",
            "externalcontact/get",
            params={"external_userid": "wmA"},
            deadline=started + 0.3,
            backoff=2.0,
        )
    # One request, not a pause of a second or more (the slack is a busy machine's).
    assert time.monotonic() - started < 0.3 + 0.5
    assert calls(simulator, "externalcontact/get") == [-1]


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


class Hostile:
    """A server in WeCom's place that answers what WeCom never would: redirects, bodies
    without end, URLs with secrets in its errmsg, tokens that are not tokens."""

    def __init__(self) -> None:
        self.gettoken: web.StreamResponse | None = None
        self.stolen: list[str] = []  # query strings that reached the redirect's target
        self.endless = False
        self.streamed = 0
        self.finished = asyncio.Event()
        self.records: list[CallRecord] = []

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/stolen":
            self.stolen.append(request.query_string)
            return web.json_response({"errcode": 0, "access_token": "stolen"})
        if self.endless:
            return await self._endless(request)
        assert self.gettoken is not None
        return self.gettoken

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """Chunks of 64 KiB up to 400 MB, or until the client goes away."""
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            while self.streamed < 400_000_000:
                await response.write(chunk)
                self.streamed += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what it should do
        finally:
            self.finished.set()
        return response

    async def record(self, record: CallRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[Hostile, WecomClient]]:
    server = Hostile()
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", server.answer)
    async with (
        TestServer(web_app, host="127.0.0.1") as test_server,
        aiohttp.ClientSession(str(test_server.make_url(""))) as http,
    ):
        client = WecomClient(
            http, max_attempts=1, record=server.record, max_answer_bytes=1024 * 1024
        )
        yield server, client
        await client.drain_records()


async def test_a_redirect_is_not_followed_and_no_secret_reaches_the_error(
    hostile: tuple[Hostile, WecomClient],
) -> None:
    server, client = hostile
    server.gettoken = web.Response(status=302, headers={"Location": "/stolen"})
    with pytest.raises(WecomApiError) as raised:
        await client.fetch_token(CORP, SECRET)
    await client.drain_records()
    assert server.stolen == []
    assert "redirects are not followed" in raised.value.errmsg
    assert [r.errmsg for r in server.records] == [raised.value.errmsg]
    assert raised.value.__cause__ is None  # a logged traceback would print the URL


async def test_urls_in_wecoms_errmsg_lose_their_query(
    hostile: tuple[Hostile, WecomClient],
) -> None:
    server, client = hostile
    leaked = f"see https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid={CORP}&corpsecret={SECRET}"
    server.gettoken = web.json_response({"errcode": 40013, "errmsg": leaked})
    with pytest.raises(WecomApiError) as raised:
        await client.fetch_token(CORP, SECRET)
    await client.drain_records()
    texts = [str(raised.value), raised.value.errmsg, *(str(r.errmsg) for r in server.records)]
    assert all(SECRET not in text and "gettoken" in text for text in texts)


def test_aiohttp_errors_lose_the_query_of_their_url() -> None:
    url = URL(f"https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid={CORP}&corpsecret={SECRET}")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    for error in (
        aiohttp.TooManyRedirects(info, ()),
        aiohttp.ClientResponseError(info, (), status=302, message="Found"),
    ):
        text = str(WecomApiError("gettoken", None, f"{type(error).__name__}: {error}"))
        assert SECRET not in text and "https://qyapi.weixin.qq.com/cgi-bin/gettoken?…" in text
    assert redact("/cgi-bin/user/get?access_token=abc123&userid=x") == (
        "/cgi-bin/user/get?access_token=…&userid=x"
    )


async def test_an_answer_past_the_bound_is_refused_not_read(
    hostile: tuple[Hostile, WecomClient],
) -> None:
    server, client = hostile
    server.gettoken = web.Response(body=b" " * (2 * 1024 * 1024))  # declared too long
    with pytest.raises(WecomApiError) as declared:
        await client.fetch_token(CORP, SECRET)
    assert declared.value.errmsg == "answer of 2097152 bytes exceeds 1048576"

    server.endless = True  # chunked, no length: refused once the bound is passed
    started = time.monotonic()
    with pytest.raises(WecomApiError) as streamed:
        await client.fetch_token(CORP, SECRET)
    assert streamed.value.errmsg == "answer exceeds 1048576 bytes"
    assert time.monotonic() - started < 5
    # The client hung up: the server could write no more than the socket buffers held.
    await asyncio.wait_for(server.finished.wait(), 5)
    assert server.streamed < 64 * 1024 * 1024


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": "x" * 513, "expires_in": 7200},
        {"access_token": "", "expires_in": 7200},
        {"access_token": 12345, "expires_in": 7200},
        {"access_token": "abc\r\nSet-Cookie: a=b", "expires_in": 7200},
        {"access_token": "abc<script>", "expires_in": 7200},
        {"access_token": "abc", "expires_in": "7200"},
        {"access_token": "abc", "expires_in": 10**9},
        {"expires_in": 7200},
    ],
)
async def test_an_implausible_access_token_is_refused(
    hostile: tuple[Hostile, WecomClient], answer: dict[str, object]
) -> None:
    server, client = hostile
    server.gettoken = web.json_response({"errcode": 0, **answer})
    with pytest.raises(WecomApiError) as raised:
        await client.fetch_token(CORP, SECRET)
    assert raised.value.errmsg.startswith("answer holds no valid")


async def test_a_real_token_is_accepted(hostile: tuple[Hostile, WecomClient]) -> None:
    server, client = hostile
    token = "1ZEMBbyYoHqsGbOUazNsCmxdPeXhFLVmZFXV-kUpiFOm_mECgfSKKzpy1X3pRZ2t8GRyQM6gkwEw"
    server.gettoken = web.json_response({"errcode": 0, "access_token": token, "expires_in": 7200})
    assert await client.fetch_token(CORP, SECRET) == (token, 7200)


def test_errcode_labels_are_bounded() -> None:
    assert errcode_label(45009, 200) == "45009"
    assert errcode_label(123456789, 200) == "other"
    assert errcode_label(None, 503) == "503"
