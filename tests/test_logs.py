"""Log lines: JSON or text, every field, the request id, never a secret or a message body;
the housekeeping round's summary."""

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Literal

import asyncpg
import httpx
import pytest

from app import housekeeping, logs
from app.actions.kinds import ActionStatus
from app.config import Settings
from app.db import asyncpg_dsn, create_engine, create_pool, create_sessionmaker
from app.metrics import ACTIONS_FINISHED, CALLBACKS, EVENTS_PROCESSED
from tests.conftest import RegisteredApp

LogFormat = Literal["text", "json"]
log = logging.getLogger("tests.logs")

SECRET = "S3cretValueNobodyMaySee"
BODY = "客户写的私密消息"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger as it was, after the test: logs.configure() replaces its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(root: logging.Logger, log_format: LogFormat) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(log_format))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return stream


def test_json_is_one_object_per_line_with_every_field(root_logging: logging.Logger) -> None:
    stream = capture(root_logging, "json")
    log.info(
        "action finished",
        extra={"action_id": 7, "kind": "welcome", "status": ActionStatus.SUCCEEDED, "n": None},
    )
    log.warning("second line")

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "tests.logs",
        "message": "action finished",
        "action_id": 7,
        "kind": "welcome",
        "status": "succeeded",
        "n": None,
    }
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert (second["level"], second["message"]) == ("WARNING", "second line")


def test_json_keeps_a_traceback_in_its_line(root_logging: logging.Logger) -> None:
    stream = capture(root_logging, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler crashed")
    [line] = stream.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_is_one_readable_line(root_logging: logging.Logger) -> None:
    stream = capture(root_logging, "text")
    log.info("action finished", extra={"action_id": 7, "status": ActionStatus.SUCCEEDED})
    assert re.fullmatch(
        r"\S+ \S+ INFO tests\.logs: action finished action_id=7 status='succeeded'\n",
        stream.getvalue(),
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_and_message_bodies_are_never_written(
    root_logging: logging.Logger, log_format: LogFormat
) -> None:
    """The names the code gives secrets and bodies, and a secret inside an error's URL."""
    stream = capture(root_logging, log_format)
    url = f"https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret={SECRET}"
    hidden = {
        name: SECRET
        for name in ("token", "aes_key", "secret", "corpsecret", "access_token", "api_key")
    } | {name: BODY for name in ("xml", "raw_body", "payload", "content", "body", "text")}
    log.warning("WeCom call failed", extra={**hidden, "error": f"ClientError({url!r})"})
    try:
        raise ConnectionError(f"redirected to {url}")
    except ConnectionError:
        log.exception("handler crashed: %s", f"access_token={SECRET}")

    written = stream.getvalue()
    assert SECRET not in written
    assert BODY not in written
    assert written.count(logs.REDACTED) == len(hidden)
    assert "https://qyapi.weixin.qq.com/cgi-bin/gettoken?…" in written  # the rest is kept


def test_configure_writes_the_chosen_format_to_stderr(
    root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "json")
    log.info("hello", extra={"app_slug": "shop"})
    log.debug("not at INFO")
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["app_slug"] == "shop"


@pytest.fixture
def lines(root_logging: logging.Logger) -> io.StringIO:
    return capture(root_logging, "json")


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_request_id_is_echoed_and_on_every_line_of_the_request(
    client: httpx.AsyncClient, lines: io.StringIO
) -> None:
    response = await client.post("/callback/nobody", params={"msg_signature": "x"})
    log.info("after the request")

    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    rejected, after = _records(lines)
    assert (rejected["message"], rejected["request_id"]) == ("callback rejected", request_id)
    assert "request_id" not in after


async def test_a_callers_request_id_is_kept(client: httpx.AsyncClient, lines: io.StringIO) -> None:
    response = await client.post(
        "/callback/nobody", params={"msg_signature": "x"}, headers={"X-Request-ID": "lb-42.a:b"}
    )
    assert response.headers["X-Request-ID"] == "lb-42.a:b"
    [rejected] = _records(lines)
    assert rejected["request_id"] == "lb-42.a:b"


@pytest.mark.parametrize("offered", ["two words", "x" * 129, "é"])
async def test_a_request_id_unfit_for_logs_is_replaced(
    client: httpx.AsyncClient, offered: str
) -> None:
    response = await client.get("/healthz", headers=[(b"X-Request-ID", offered.encode())])
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    async with create_pool(asyncpg_dsn(settings.database_url), settings, max_size=2) as opened:
        yield opened


async def test_summary_tells_what_this_process_did_since_the_last(
    pool: asyncpg.Pool,
    db: asyncpg.Connection,
    wecom_app: RegisteredApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    summary = housekeeping.Summary()
    CALLBACKS.labels("stored").inc(3)
    CALLBACKS.labels("bad_signature").inc()
    EVENTS_PROCESSED.labels("processed").inc(2)
    ACTIONS_FINISHED.labels("welcome", "succeeded").inc()
    ACTIONS_FINISHED.labels("mark_tag", "succeeded").inc()
    ACTIONS_FINISHED.labels("welcome", "expired").inc()
    await db.execute(
        """INSERT INTO events (app_id, received_at, family, type, dedup_key, raw_body, xml,
                               payload)
           SELECT id, now() - interval '90 seconds', 'event', 'click', 'k', '', '', '{}'
           FROM apps"""
    )

    with caplog.at_level(logging.INFO, logger="app.housekeeping"):
        await housekeeping.log_summary(pool, summary)
        await housekeeping.log_summary(pool, summary)

    first, second = (vars(record) for record in caplog.records)
    assert first["msg"] == "summary"
    assert {
        name: first[name]
        for name in (
            "callbacks_stored",
            "callbacks_rejected",
            "events_processed",
            "actions_succeeded",
            "actions_expired",
            "actions_failed",
            "events_pending",
            "actions_pending",
        )
    } == {
        "callbacks_stored": 3,
        "callbacks_rejected": 1,
        "events_processed": 2,
        "actions_succeeded": 2,
        "actions_expired": 1,
        "actions_failed": 0,
        "events_pending": 1,
        "actions_pending": 0,
    }
    assert 90 <= first["processing_lag_seconds"] < 120
    assert (second["callbacks_stored"], second["actions_succeeded"]) == (0, 0)


class _Awaited(logging.Handler):
    """Sets `seen` when a line with this message is logged."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.seen.set()


async def test_the_housekeeping_loop_logs_a_summary_each_round(
    pool: asyncpg.Pool, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    summary = _Awaited("summary")
    logging.getLogger("app.housekeeping").addHandler(summary)
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        with caplog.at_level(logging.INFO, logger="app.housekeeping"):
            loop = asyncio.create_task(
                housekeeping.run(
                    pool, create_sessionmaker(engine), stop, retention_days=180, every=0.05
                )
            )
            await asyncio.wait_for(summary.seen.wait(), 10)
            stop.set()
            await asyncio.wait_for(loop, 10)
    finally:
        logging.getLogger("app.housekeeping").removeHandler(summary)
        await engine.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
