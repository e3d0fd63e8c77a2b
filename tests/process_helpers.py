"""For tests that run wecom-hub as a user does, in processes of its own: a free port, a
condition waited on with a bound, a URL that answers 200."""

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

WECOM_HUB = str(Path(sys.executable).parent / "wecom-hub")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def answers_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
