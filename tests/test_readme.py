"""The README's shell examples, run as a reader would run them on a fresh clone.

Every ```sh block of README.md is cut into commands (`\\` continuations and multi-line quoted
JSON kept, as bash reads them) and each one is run by bash in a folder laid out like a clone
(`.venv` is this venv), against a fresh database on the test Postgres and the simulator. What a
reader must fill in is the test's `fill_in`, the one table of substitutions; what is not run
says why in NOT_RUN. A command of a kind this test does not know fails it, so the README
cannot grow an example that is never tried.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.crypto.at_rest import generate_key
from tests.conftest import Simulator, random_app
from tests.process_helpers import answers_ok, free_port, stop, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
VENV = Path(sys.executable).parent.parent
CORP_ID = "ww1234567890abcdef"  # the README's corp id is valid as written
README_BASE_URL = "http://127.0.0.1:8000"
# The tag ids and the customer the README names, made to exist: a reader's come from WeCom.
TAG_IDS = ("etXXXX", "etYYYY", "etZZZZ")
CUSTOMER = "wmXXXX"
# A real (1x1) PNG and a minimal PDF, as a reader's files would be.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
# Commands not run, by their first words, and why.
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest": (
        "the install and the whole suite: this test is part of that suite, in that venv"
    ),
    "KEY=whk_…": "the placeholder assignment: the test gives KEY the key `apikeys create` printed",
    ".venv/bin/pytest ": "the whole suite, which this test is part of",
    ".venv/bin/ruff check . && ": "lint of the working tree: CI's job, and minutes of mypy",
    "WECOM_HUB_DATABASE_URL=postgresql://… .venv/bin/alembic revision": (
        "writes a new migration file into migrations/"
    ),
}
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
# Long-running commands: started, seen working, stopped with the signal the README names.
DEMO = ".venv/bin/wecom-hub demo"
BOUND = 60.0  # seconds any one step may take
BASH = "/bin/bash"  # the reader's shell


@dataclass
class Reader:
    """What a reader fills in, and what earlier commands printed that later ones use."""

    clone: Path
    env: dict[str, str]
    base_url: str
    fill_in: dict[str, str]
    key: str | None = None
    ran: list[str] = field(default_factory=list)

    def fill(self, command: str) -> str:
        for placeholder, value in self.fill_in.items():
            command = command.replace(placeholder, value)
        return command


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[str]:
    """A block's commands as bash would read them: a line ending in `\\` or inside an open
    quote continues; whole-line comments and blank lines between commands are dropped."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: a multi-line JSON argument
            continue
        found.append(pending.rstrip("\n"))
        pending = ""
    assert not pending, f"unterminated command in the README: {pending!r}"
    return found


def bash(reader: Reader, command: str) -> subprocess.CompletedProcess[str]:
    """The command as a reader's shell runs it, `wecom-hub` on the PATH (`. .venv/bin/activate`)
    and curl reporting the HTTP status on a last line of its own."""
    wrapper = 'curl() { command curl -w "\\n%{http_code}" "$@"; }\n'
    done = subprocess.run(
        [BASH, "-c", wrapper + command],
        cwd=reader.clone,
        env=reader.env,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    reader.ran.append(command)
    return done


def run_cli(reader: Reader, command: str) -> str:
    done = bash(reader, command)
    assert done.returncode == 0, f"README command failed:\n{command}\n{done.stdout}{done.stderr}"
    return done.stdout


def run_curl(reader: Reader, command: str) -> str:
    """The answer's body; a status outside 2xx fails, since curl -s alone would hide it."""
    done = bash(reader, command)
    body, _, status = done.stdout.rpartition("\n")
    assert done.returncode == 0 and status.startswith("2"), (
        f"README curl failed ({status}):\n{command}\n{body}{done.stderr}"
    )
    return body


def run_demo(reader: Reader, command: str) -> None:
    """`demo` runs the loop, prints what it saw and a `sim send` to try meanwhile, and waits
    for Ctrl-C: all of it must happen, and the printed `sim send` must work."""
    demo = subprocess.Popen(
        [BASH, "-c", f"exec {command}"],
        cwd=reader.clone,
        env=reader.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + BOUND
    try:
        for line in demo.stdout:  # bounded: the process is killed below if it hangs
            lines.append(line)
            if "Ctrl-C stops." in line or time.monotonic() > deadline:
                break
        tries = [line.removeprefix("more: ") for line in lines if line.startswith("more: ")]
        assert tries, "".join(lines)
        run_cli(reader, tries[0])
    finally:
        stop(demo, signal.SIGINT, BOUND)
    assert demo.stdout is not None
    with demo.stdout:
        output = "".join(lines) + demo.stdout.read()
    reader.ran.append(command)
    assert demo.returncode == 0, f"README command failed:\n{command}\n{output}"
    assert "answered 200 success" in output and "status=succeeded" in output, output


def run_one(reader: Reader, written: str) -> None:
    """Run one README command by its kind; a kind this test does not know fails it."""
    if any(written.startswith(prefix) for prefix in NOT_RUN):
        return
    if written.startswith(INSTALL):
        written = written.removeprefix(INSTALL)  # the venv exists: this test runs in it
    command = reader.fill(written)
    first = command.split()[0]
    if written == DEMO:
        run_demo(reader, command)
    elif first in ("wecom-hub", ".venv/bin/wecom-hub"):
        out = run_cli(reader, command)
        if " apikeys create " in command and reader.key is None:
            reader.key = re.findall(r"^whk_\S+$", out, flags=re.MULTILINE)[0]
            reader.env["KEY"] = reader.key
    elif first == "export":  # a setting the following commands need
        name, _, value = command.split("#")[0].split(maxsplit=1)[1].strip().partition("=")
        reader.env[name] = value
    elif first == "curl":
        body = run_curl(reader, command)
        if "/api/v1/media" in command:
            media_id = httpx.Response(200, content=body).json()["id"]
            reader.fill_in["9f86d0…"] = media_id
    else:
        pytest.fail(f"README command of an unknown kind (run it or list it in NOT_RUN): {written}")


async def seed(db: asyncpg.Connection) -> None:
    """What WeCom would have given the reader: the tags and the customer the README names."""
    await db.execute(
        "INSERT INTO tag_groups (corp_id, group_id, name) VALUES ($1, 'etGROUP', 'readme')",
        CORP_ID,
    )
    for tag_id in TAG_IDS:
        await db.execute(
            "INSERT INTO tags (corp_id, tag_id, group_id, name) VALUES ($1, $2, 'etGROUP', $3)",
            CORP_ID,
            tag_id,
            tag_id,
        )
    await db.execute(
        "INSERT INTO external_contacts (corp_id, external_userid, name) VALUES ($1, $2, '客户')",
        CORP_ID,
        CUSTOMER,
    )
    await db.execute(
        "INSERT INTO follows (corp_id, userid, external_userid, status, added_at)"
        " VALUES ($1, 'zhangsan', $2, 'active', now())",
        CORP_ID,
        CUSTOMER,
    )


def a_clone(tmp_path: Path) -> Path:
    """A folder laid out like a clone: `.venv` is this venv; the attachment files the rules
    name are in it, and it is the media folder (the README's /srv/media)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(VENV)
    (clone / "poster.png").write_bytes(PNG)
    (clone / "价目表.pdf").write_bytes(PDF)
    return clone


@contextmanager
def serving(reader: Reader) -> Iterator[None]:
    """`wecom-hub serve` as the README says to start it, for the curl examples."""
    port = reader.base_url.rsplit(":", 1)[1]
    log = reader.clone.parent / "serve.log"  # a file: a full pipe would stall serve
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [".venv/bin/wecom-hub", "serve", "--port", port],
            cwd=reader.clone,
            env=reader.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = wait_until(
            lambda: serve.poll() is not None or answers_ok(f"{reader.base_url}/readyz"), BOUND
        )
        assert ready and serve.poll() is None, log.read_text()
        yield
    finally:
        stop(serve, signal.SIGTERM, BOUND)
    assert serve.returncode == 0, log.read_text()


def test_commands_parse_like_bash() -> None:
    block = "# c\nwecom-hub a --x '{\"t\":\n  1}' \\\n  --y 2  # why\n\nwecom-hub b\n"
    assert commands(block) == ["wecom-hub a --x '{\"t\":\n  1}' \\\n  --y 2  # why", "wecom-hub b"]


async def test_readme_commands_work_as_written(
    tmp_path: Path, database_url: str, db: asyncpg.Connection, simulator: Simulator
) -> None:
    await seed(db)
    clone = a_clone(tmp_path)
    app = random_app("shop")
    base_url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env.update(
        PATH=f"{VENV / 'bin'}:{env['PATH']}",
        WECOM_HUB_DATABASE_URL=database_url,
        WECOM_HUB_SECRET_KEY=generate_key(),
        WECOM_HUB_WECOM_API_BASE_URL=simulator.url,
    )
    # What a reader fills in, README text → value.
    fill_in = {
        "<43-char EncodingAESKey>": app.aes_key,
        "<app Secret>": app.secret,
        "[--agent-id 1000002]": "--agent-id 1000002",  # optional options, given
        '[--label "Shop assistant"]': '--label "Shop assistant"',
        README_BASE_URL: base_url,  # port 8000 may be taken on a shared machine
        "/srv/media": str(clone),  # the reader's media folder: here the clone, with the files
        DEMO: f"{DEMO} --port {free_port()} --sim-port {free_port()}",
    }
    reader = Reader(clone, env, base_url, fill_in)
    written = [c for block in shell_blocks(README.read_text()) for c in commands(block)]

    with serving(reader):
        # the id of a key to revoke: one of its own, not the key the curl examples use
        out = run_cli(reader, ".venv/bin/wecom-hub apikeys create --name old --scope read")
        old_key = re.findall(r"API key (\d+)", out)[0]
        reader.fill_in["apikeys revoke 3"] = f"apikeys revoke {old_key}"
        for command in written:
            run_one(reader, command)

    assert len(reader.ran) >= 20, reader.ran  # the README's 20-odd examples, not none found
