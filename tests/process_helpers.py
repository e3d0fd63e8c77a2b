"""For tests that run wecom-hub as a user does, in processes of its own: a free port, a
condition waited on with a bound, a URL that answers 200."""

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def stop(process: subprocess.Popen[Any], signum: int, timeout: float) -> None:
    """Ask a process to stop with `signum`; kill it if it has not within `timeout`, so that
    no test leaves one running, whatever failed."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


async def stop_async(process: asyncio.subprocess.Process, signum: int, within: float) -> None:
    """`stop` for a process started with asyncio.create_subprocess_exec."""
    if process.returncode is None:
        process.send_signal(signum)
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
