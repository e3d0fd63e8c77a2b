"""A client that sends its headers and half a body, then stalls, is cut off with 408
`body_timeout` within callback_body_timeout_seconds (issue 10 item 6): over a real socket,
through uvicorn, since the ASGI test client cannot stall halfway."""

import json
import socket
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from app.simulator.callbacks import build_callback, text_message
from tests.conftest import RegisteredApp

BODY_TIMEOUT = 0.5
SLACK = 3.0  # scheduling on a busy CI machine; still far below "for ever"


@pytest.fixture
def server(settings: Settings, db: asyncpg.Connection) -> Iterator[tuple[str, int]]:
    """wecom-hub on a real port, in a thread of its own, with a short body timeout."""
    configured = settings.model_copy(update={"callback_body_timeout_seconds": BODY_TIMEOUT})
    app = create_app(configured, database_url=configured.database_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, access_log=False)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline, "wecom-hub did not start"
        time.sleep(0.01)
    yield sock.getsockname()
    running.should_exit = True
    thread.join(10)
    sock.close()


def _read_answer(conn: socket.socket) -> tuple[bytes, bytes]:
    """The status line and body of one answer. Not read to the connection's end: uvicorn
    keeps it open for the keep-alive timeout after answering."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(65536) or pytest.fail(f"closed without an answer: {received!r}")
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(v)
        for n, _, v in (line.partition(b": ") for line in lines)
        if n.lower() == b"content-length"
    )
    while len(body) < length:
        body += conn.recv(65536) or pytest.fail(f"closed mid-answer: {received!r}")
    return lines[0], body


def test_a_stalled_body_gets_408_within_the_bound(
    server: tuple[str, int], wecom_app: RegisteredApp
) -> None:
    message = text_message(corp_id=wecom_app.corp_id, from_user="u", content="hi", msg_id="7")
    callback = build_callback(wecom_app.crypt, message)
    query = "&".join(f"{name}={value}" for name, value in callback.params.items())
    head = (
        f"POST /callback/{wecom_app.slug}?{query} HTTP/1.1\r\nHost: hub\r\n"
        f"Content-Length: {len(callback.body)}\r\nContent-Type: text/xml\r\n\r\n"
    ).encode()
    with socket.create_connection(server, timeout=BODY_TIMEOUT + SLACK) as conn:
        started = time.monotonic()
        conn.sendall(head + callback.body[: len(callback.body) // 2])
        status, body = _read_answer(conn)  # the socket's timeout fails it if none comes
        elapsed = time.monotonic() - started

    assert status == b"HTTP/1.1 408 Request Timeout", body
    assert json.loads(body)["code"] == "body_timeout"
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + SLACK
