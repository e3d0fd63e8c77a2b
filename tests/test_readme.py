"""The README's shell examples, run as a reader would run them on a fresh clone.

Every ```sh block of README.md is cut into commands (`\\` continuations and multi-line quoted
JSON kept, as bash reads them) and each one is run by bash in a folder laid out like a clone
(`.venv` is this venv), against a fresh database on the test Postgres and the simulator. What a
reader must fill in is the test's `fill_in`, the one table of substitutions; what is not run
says why in NOT_RUN. A command of a kind this test does not know fails it, so the README
cannot grow an example that is never tried.
"""

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import get_settings
from app.crypto.at_rest import generate_key, parse_key
from app.simulator.state import SimApp
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
    # What happens in the world between two commands (a customer scans a code, a member
    # sends a broadcast): called with each command run and what it printed.
    meanwhile: list[Callable[["Reader", str, str], None]] = field(default_factory=list)

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
    out = ""
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
        out = body = run_curl(reader, command)
        if "/api/v1/media" in command:
            media_id = httpx.Response(200, content=body).json()["id"]
            reader.fill_in["9f86d0…"] = media_id
    else:
        pytest.fail(f"README command of an unknown kind (run it or list it in NOT_RUN): {written}")
    for happens in reader.meanwhile:
        happens(reader, command, out)


def api_get(reader: Reader, path: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{reader.base_url}{path}", headers={"Authorization": f"Bearer {reader.key}"}, timeout=10
    )
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def the_loop_goes_on(simulator: Simulator) -> Callable[[Reader, str, str], None]:
    """What the README's channel and broadcast examples assume happens between them: a
    customer scans the new code (`sim scan`, the callback delivered and processed), and a
    broadcast's tasks are made at WeCom before a member is reminded of them."""

    def meanwhile(reader: Reader, command: str, out: str) -> None:
        if command.startswith("curl -s -X POST") and "/api/v1/channels " in command:
            channel = json.loads(out)
            scanned = bash(
                reader,
                f"wecom-hub sim scan --app shop {channel['config_id']} "
                f"--hub {reader.base_url} --sim {simulator.url}",
            )
            assert scanned.returncode == 0, scanned.stdout + scanned.stderr
            reader.ran.pop()  # not the README's
            added = wait_until(
                lambda: api_get(reader, f"/api/v1/channels/{channel['id']}/stats")["added"] == 1,
                BOUND,
            )
            assert added, "the scanned customer is not counted for the channel"
        elif (
            command.startswith("curl -s -X POST")
            and '"dry_run"' not in command
            and ("/api/v1/broadcasts " in command)
        ):
            broadcast = json.loads(out)
            made = wait_until(
                lambda: (
                    api_get(reader, f"/api/v1/broadcasts/{broadcast['id']}")["funnel"]["tasks"] >= 1
                ),
                BOUND,
            )
            assert made, "the broadcast's WeCom task was not made"

    return meanwhile


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
    reader = Reader(clone, env, base_url, fill_in, meanwhile=[the_loop_goes_on(simulator)])
    written = [c for block in shell_blocks(README.read_text()) for c in commands(block)]
    # WeCom's console knows the app the README adds, and its member zhangsan.
    simulator.state.add_app(
        SimApp("shop", CORP_ID, secret=app.secret, token="Your32CharToken", aes_key=app.aes_key)
    )
    simulator.state.corp(CORP_ID).members.append("zhangsan")

    with serving(reader):
        # the id of a key to revoke: one of its own, not the key the curl examples use
        out = run_cli(reader, ".venv/bin/wecom-hub apikeys create --name old --scope read")
        old_key = re.findall(r"API key (\d+)", out)[0]
        reader.fill_in["apikeys revoke 3"] = f"apikeys revoke {old_key}"
        for command in written:
            run_one(reader, command)

    assert len(reader.ran) >= 20, reader.ran  # the README's 20-odd examples, not none found


# The commands the README names in its prose (`wecom-hub worker`, `apps list | show SLUG | …`),
# each run as the sentence says, its placeholders filled in.

PROSE_FILL = {"SLUG": "shop", "SCENARIO": "message"}
# Prose commands run by the sh blocks above (as those blocks write them), or not run here.
PROSE_ELSEWHERE = {
    ".venv/bin/wecom-hub serve": "`serving` starts it so for the sh blocks' curl examples",
    "wecom-hub serve": "what the benchmarks start; run here as `serve --host 0.0.0.0 --port`",
    "wecom-hub rules add": "the Automations sh block runs nine of them",
    "wecom-hub apikeys create": "the API sh block runs it",
}


def prose_commands(markdown: str) -> list[str]:
    """Every `wecom-hub …` code span outside the code blocks, one command per alternative:
    `apps list | show SLUG` is `apps list` and `apps show SLUG`; `rules add|list` is
    `rules add` and `rules list`."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    found: list[str] = []
    for wrapped in re.findall(r"`((?:\.venv/bin/)?wecom-hub\s[^`]+)`", prose):
        span = " ".join(wrapped.split())  # a span may wrap onto the next line
        if " | " in span:
            first, *others = span.split(" | ")
            head = first.rsplit(" ", 1)[0]
            found += [first, *(f"{head} {other}" for other in others)]
        elif "|" in span:
            head, _, choices = span.rpartition(" ")
            found += [f"{head} {choice}" for choice in choices.split("|")]
        else:
            found.append(span)
    return list(dict.fromkeys(found))


def test_prose_commands_are_split_into_one_per_alternative() -> None:
    text = "Run `wecom-hub a x | y SLUG` or `wecom-hub b\nc|d`.\n```sh\nwecom-hub z\n```\n"
    assert prose_commands(text) == [
        "wecom-hub a x",
        "wecom-hub a y SLUG",
        "wecom-hub b c",
        "wecom-hub b d",
    ]


class ProseReader:
    """Runs prose commands as a reader would type them (`wecom-hub` on the PATH), each one
    recorded, so that the test can check every command the README names was run. The
    long-running ones (`serve`, `worker`, `sim serve`) run in processes of their own."""

    def __init__(self, clone: Path, env: dict[str, str], fill_in: dict[str, str]) -> None:
        self.clone, self.env, self.fill_in = clone, env, fill_in
        self.ran: set[str] = set()

    def command(self, written: str, *extra: str) -> list[str]:
        self.ran.add(written)
        words = shlex.split(written)
        filled = [self.fill_in.get(word, word) for word in words]
        return [*filled, *extra]

    async def run(self, written: str, *extra: str, stdin: str | None = None) -> str:
        """A short command, run by the CLI's own entry point in this process (with the
        reader's settings) rather than in a new one: a second or more saved per command,
        the same arguments parsed the same way. In a thread: it runs its own event loop."""
        args = self.command(written, *extra)
        assert args[0] == "wecom-hub", args
        settings = {k: v for k, v in self.env.items() if k.startswith("WECOM_HUB_")}
        get_settings.cache_clear()
        try:
            done = await asyncio.to_thread(
                CliRunner().invoke, cli, args[1:], input=stdin, env=settings
            )
        finally:
            get_settings.cache_clear()
        assert done.exit_code == 0, f"README command failed: {args}\n{done.output}"
        return done.output

    @contextmanager
    def running(self, written: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
        """A long-running command, stopped with SIGTERM (as the README says `serve` and
        `worker` stop) once the block is done; it must still run then, and exit 0."""
        log = self.clone.parent / f"{written.split()[1]}-{len(self.ran)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.command(written, *extra),
                cwd=self.clone,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield process
            assert process.poll() is None, log.read_text()
        finally:
            stop(process, signal.SIGTERM, BOUND)
        assert process.returncode == 0, log.read_text()


def answering(process: subprocess.Popen[bytes], url: str) -> bool:
    """The process answers 200 at url within BOUND, and has not ended."""
    wait_until(lambda: process.poll() is not None or answers_ok(url), BOUND)
    return process.poll() is None and answers_ok(url)


async def test_readme_prose_commands_work_as_written(
    tmp_path: Path, database_url: str, db: asyncpg.Connection
) -> None:
    written = prose_commands(README.read_text())
    clone = a_clone(tmp_path)
    app = random_app("shop")
    hub_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_HUB_")}
    env.update(
        PATH=f"{VENV / 'bin'}:{env['PATH']}",
        WECOM_HUB_DATABASE_URL=database_url,
        WECOM_HUB_SECRET_KEY=generate_key(),
        WECOM_HUB_WECOM_API_BASE_URL=f"http://127.0.0.1:{sim_port}",
        WECOM_HUB_PROCESS_IN_SERVE="false",  # "run `wecom-hub worker` processes … and set"
        # "or set WECOM_HUB_APP_TOKEN, WECOM_HUB_APP_AES_KEY, WECOM_HUB_APP_SECRET"
        WECOM_HUB_APP_TOKEN=app.token,
        WECOM_HUB_APP_AES_KEY=app.aes_key,
        WECOM_HUB_APP_SECRET=app.secret,
        WECOM_HUB_LOG_LEVEL="WARNING",
    )
    hub = f"http://127.0.0.1:{hub_port}"
    reader = ProseReader(clone, env, PROSE_FILL | {"8000": str(hub_port)})

    assert "latest migration" in await reader.run("wecom-hub migrate")
    await reader.run("wecom-hub apps add", "--slug", "shop", "--corp-id", app.corp_id)
    assert "/callback/shop" in await reader.run("wecom-hub apps list")
    shown = await reader.run("wecom-hub apps show SLUG")
    assert all(secret not in shown for secret in (app.token, app.aes_key, app.secret))
    # "`apps update SLUG --secret -` rotates a secret"
    await reader.run("wecom-hub apps update SLUG", "--secret", "-", stdin=f"{app.secret}\n")

    sim = f"http://127.0.0.1:{sim_port}"
    with (
        reader.running("wecom-hub sim serve", "--port", str(sim_port)) as sim_serve,
        reader.running("wecom-hub serve --host 0.0.0.0 --port 8000") as serve,
        reader.running("wecom-hub worker"),
    ):
        for process, ready in ((sim_serve, f"{sim}/sim/calls"), (serve, f"{hub}/readyz")):
            assert answering(process, ready), f"{process.args!r} did not start"
        await reader.run("wecom-hub sim send SCENARIO --app SLUG", "--hub", hub, "--sim", sim)

        async def processed() -> bool:  # by the worker: serve does not process here
            done = await db.fetchval("SELECT count(*) FROM events WHERE status = 'processed'")
            return bool(done) and not await db.fetchval(
                "SELECT count(*) FROM events WHERE status = 'pending'"
            )

        deadline = time.monotonic() + BOUND
        while not await processed():
            assert time.monotonic() < deadline, "the worker processed nothing"
            await asyncio.sleep(0.1)
        # "resumable after an interruption, and running it twice changes nothing"
        for _ in range(2):
            assert "finished" in await reader.run("wecom-hub sync --app SLUG")

    added = await reader.run(
        "wecom-hub rules add", "welcome", "--name", "hi", "--app", "shop", "--match", "{}",
        "--content", '{"text": "你好"}',
    )  # fmt: skip
    rule_id = re.findall(r"rule (\d+)", added)[0]
    assert "hi" in await reader.run("wecom-hub rules list")
    assert '"你好"' in await reader.run("wecom-hub rules show", rule_id)
    await reader.run("wecom-hub rules update", rule_id, "--priority", "5")
    await reader.run("wecom-hub rules disable", rule_id)
    await reader.run("wecom-hub rules enable", rule_id)
    await reader.run("wecom-hub rules remove", rule_id)
    assert len(parse_key((await reader.run("wecom-hub secret-key")).strip())) == 32
    # No previous key: every value is already sealed under the current one; nothing to do.
    assert "every stored secret is sealed with key" in await reader.run(
        "wecom-hub secret-key rotate"
    )
    assert "removed app 'shop'" in await reader.run("wecom-hub apps remove SLUG")

    not_run = [c for c in written if c not in reader.ran and c not in PROSE_ELSEWHERE]
    assert not not_run, f"README prose commands this test does not run: {not_run}"
    unknown = [c for c in reader.ran if c not in written and c != "wecom-hub apps add"]
    assert not unknown, f"run as README prose, but the README does not say them: {unknown}"
