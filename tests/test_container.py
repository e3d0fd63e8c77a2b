"""The container files, checked without a Docker engine (none runs on these machines).

docker-compose.yml is read as Compose reads it and its wiring checked. The Dockerfile is
parsed: its final stage is checked, and its build stage is carried out here as written (its
COPY through .dockerignore, its RUN by the shell), into a temporary folder that stands for the
image's `/`. The result is then started the way a container starts it: the image's
environment only, as an unprivileged user, through the image's ENTRYPOINT with the compose
services' commands and environment, and the secrets as files that wecom-hub reads itself.
"""

import asyncio
import inspect
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from app.cli import process
from app.config import Settings
from app.crypto.at_rest import generate_key
from app.db import asyncpg_dsn
from tests.process_helpers import answers_ok, free_port, wait_until
from tests.process_helpers import stop as process_stop

# The image (a pip install, half a minute) is module-scoped: one worker builds it once.
pytestmark = pytest.mark.one_worker

REPO = Path(__file__).resolve().parent.parent
# The image's $PATH after the venv, less /usr/local (this machine's is not the image's).
SYSTEM_PATH = "/usr/bin:/bin"
# The variables python:*-slim sets that matter to Python itself.
BASE_IMAGE_ENV = {"LANG": "C.UTF-8"}
NOBODY = 65534
SERVE_PORT: int = inspect.signature(process.serve).parameters["port"].default
HUB_SERVICES = ("migrate", "serve", "worker")
SECRETS_DIR = "/run/secrets/"
BUILD_TOOLS = {"build-essential", "gcc", "g++", "clang", "make"}


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def args_of(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        pairs = (word.split("=", 1) for args in self.args_of("ENV") for word in shlex.split(args))
        return {key: value for key, value in pairs}


def logical_lines(text: str) -> Iterator[str]:
    """Instructions one per line: comments dropped, continued lines joined, as Docker does."""
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            yield current.strip()
        current = ""


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages, with global ARG defaults put into each FROM."""
    global_args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            for name, value in global_args.items():
                args = args.replace("${" + name + "}", value)
            base, _, name = args.partition(" AS ")
            stages.append((base.strip(), name.strip() or None, []))
        elif not stages and keyword == "ARG":
            name, _, value = args.partition("=")
            global_args[name] = value
        else:
            stages[-1][2].append(Instruction(keyword, args))
    return [Stage(base, name, tuple(instructions)) for base, name, instructions in stages]


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT, CMD and HEALTHCHECK CMD must be JSON (exec form): no shell between
    SIGTERM and wecom-hub."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_two_stages_on_the_slim_python_that_the_tests_run_on(stages: list[Stage]) -> None:
    build, final = stages
    tested = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    assert build.name == "build"
    assert build.base.startswith(tested), build.base
    assert final.base == build.base, "the venv is copied across: both stages, one Python"


def test_final_stage_runs_the_wheel_venv_as_a_non_root_user(stages: list[Stage]) -> None:
    build, final = stages
    venv = build.env()["VIRTUAL_ENV"]
    assert final.args_of("COPY") == [f"--from=build {venv} {venv}"], "only the venv"
    assert final.env()["PATH"].startswith(f"{venv}/bin:")
    [user] = final.args_of("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid != "0", "numeric, for runAsNonRoot"
    run = " && ".join(final.args_of("RUN"))
    assert f"--uid {uid}" in run
    words = set(re.split(r"[\s;&|]+", run))
    assert not words & BUILD_TOOLS and not [w for w in words if w.endswith("-dev")]
    assert final.args_of("VOLUME") == [final.env()["WECOM_HUB_DATA_DIR"]] == ["/data"]
    assert "--mode=0700 /data" in run, "the data folder belongs to the user, and only to it"


def test_entrypoint_serves_by_default_and_the_health_check_asks_for_liveness(
    stages: list[Stage],
) -> None:
    final = stages[-1]
    [entrypoint] = final.args_of("ENTRYPOINT")
    [cmd] = final.args_of("CMD")
    assert exec_form(entrypoint) == ["wecom-hub"]
    assert exec_form(cmd) == ["serve", "--host", "0.0.0.0"]  # noqa: S104 (in its own network)
    assert final.args_of("EXPOSE") == [str(SERVE_PORT)]
    [healthcheck] = final.args_of("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options
    assert f"http://127.0.0.1:{SERVE_PORT}/healthz" in " ".join(exec_form(command))


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_is_what_the_build_copies(
    stages: list[Stage], ignore_patterns: list[str]
) -> None:
    copied = [src for args in stages[0].args_of("COPY") for src in args.split()[:-1]]
    assert copied == ["pyproject.toml", "README.md", "app", "migrations"]
    for path in [*copied, "app/cli/__init__.py", "migrations/versions/__init__.py"]:
        assert not dockerignore_excludes(ignore_patterns, path), path
    for path in (
        ".env",
        ".git/HEAD",
        ".venv/bin/python",
        ".wecom-hub/secret.key",
        "deploy/secrets/postgres_password",
        "tests/conftest.py",
        ".pytest_cache/v/cache/lastfailed",
        "bench/results/x.json",
        "__pycache__/x.pyc",
        "app/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(ignore_patterns, path), path


# --- docker-compose.yml ----------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's interpolation with nothing set in the environment: `$$` is a dollar,
    `${NAME:-default}` its default. A bare `$` would be a variable Compose fills or rejects:
    the shell never sees it, so it is an error here."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        assert match[0] != "$", f"a bare $ in {value!r}: Compose takes it for a variable"
        assert match["default"] is not None, f"{match[0]!r} in {value!r} has no default"
        return match["default"]

    return re.sub(r"\$\$|\$\{\w+(?::-(?P<default>[^}]*))?\}|\$", one, value)


def interpolated(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [interpolated(item) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(item) for key, item in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = interpolated(yaml.safe_load((REPO / "docker-compose.yml").read_text()))
    return loaded


def secret_files(service: dict[str, Any]) -> dict[str, str]:
    """Setting → compose secret, for each setting that names a mounted secret's file."""
    environment: dict[str, str] = service["environment"]
    return {
        name: value.removeprefix(SECRETS_DIR)
        for name, value in environment.items()
        if value.startswith(SECRETS_DIR)
    }


def test_postgres_keeps_its_data_in_a_volume_and_reports_its_health(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    volume, _, target = postgres["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in compose["volumes"]
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and "--host=127.0.0.1" in test
    assert f"--username={postgres['environment']['POSTGRES_USER']}" in test


def test_hub_services_run_one_image_on_postgres_with_the_secrets(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    password_file = postgres["environment"]["POSTGRES_PASSWORD_FILE"]
    assert password_file.removeprefix(SECRETS_DIR) in postgres["secrets"]
    for name in HUB_SERVICES:
        service = compose["services"][name]
        assert service["build"] == "." and service["image"] == "wecom-hub:latest", name
        assert "entrypoint" not in service, f"{name}: the image's, no shell before wecom-hub"
        assert service["command"], name
        url = make_url(service["environment"]["WECOM_HUB_DATABASE_URL"])
        assert (url.host, url.port) == ("postgres", 5432), name
        assert url.username == postgres["environment"]["POSTGRES_USER"]
        assert url.database == postgres["environment"]["POSTGRES_DB"]
        assert url.password is None, f"{name}: the password is a secret, not in the URL"
        read = secret_files(service)
        assert read == {
            "WECOM_HUB_SECRET_KEY_FILE": "wecom_hub_secret_key",
            "WECOM_HUB_DATABASE_PASSWORD_FILE": password_file.removeprefix(SECRETS_DIR),
        }
        for setting in read:
            assert setting.removeprefix("WECOM_HUB_").lower() in Settings.model_fields, setting
        assert sorted(service["secrets"]) == sorted(read.values()), name
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./deploy/secrets/"), "kept out of git and images"


def test_migrations_run_once_postgres_is_healthy_and_before_serve_and_worker(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("serve", "worker"):
        after = {"migrate": {"condition": "service_completed_successfully"}}
        assert services[name]["depends_on"] == after, name
        assert services[name]["restart"] == "unless-stopped", name


def test_serve_leaves_processing_to_the_worker_and_both_stop_in_time(
    compose: dict[str, Any],
) -> None:
    serve, worker = compose["services"]["serve"], compose["services"]["worker"]
    assert serve["command"][0] == "serve" and worker["command"] == ["worker"]
    assert serve["environment"]["WECOM_HUB_PROCESS_IN_SERVE"] == "false"
    assert "WECOM_HUB_PROCESS_IN_SERVE" not in worker["environment"]
    assert "healthcheck" not in serve, "the image's own: /healthz"
    for name in ("migrate", "worker"):
        assert compose["services"][name]["healthcheck"] == {"disable": True}, name
    shutdown = Settings.model_fields["shutdown_seconds"].default
    for service in (serve, worker):
        assert float(service["stop_grace_period"].removesuffix("s")) > shutdown


# --- the image, built and started here -------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """The build's result in a folder standing for the image's `/`."""

    root: Path
    env: dict[str, str]
    user: list[str]  # the command prefix that runs as the image's unprivileged user
    uid: int

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def as_unprivileged_user() -> tuple[list[str], int]:
    """Run as nobody when the tests run as root (the image runs as uid 10001; either way
    not root): setpriv changes nothing on the machine, unlike creating a user."""
    if os.geteuid() != 0:
        return [], os.geteuid()
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root, setpriv (util-linux) is needed to drop to nobody"
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], NOBODY


def runnable_python(version: str, user: list[str]) -> Path:
    """The image's Python version, in a place the unprivileged user can reach (a pyenv under
    /root it cannot), with pip and venv: the build's `python`."""
    candidates = [
        Path(f"/usr/local/bin/python{version}"),
        Path(f"/usr/bin/python{version}"),
        Path(sys.base_prefix) / "bin" / f"python{version}",
    ]
    for python in candidates:
        check = [*user, str(python), "-c", "import ensurepip, pip, venv"]
        if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
            return python
    raise AssertionError(f"none of {candidates} has pip and venv and is runnable by the user")


def copy_context(stage: Stage, root: Path, ignore: list[str]) -> Path:
    """The stage's COPY instructions, from this checkout through .dockerignore."""
    [workdir] = stage.args_of("WORKDIR")
    target = root / workdir.lstrip("/")
    for args in stage.args_of("COPY"):
        *sources, destination = args.split()
        into = target / destination
        for source in sources:
            origin = REPO / source
            for file in [origin] if origin.is_file() else sorted(origin.rglob("*")):
                relative = file.relative_to(REPO).as_posix()
                if not file.is_file() or dockerignore_excludes(ignore, relative):
                    continue
                copy = into / file.name if file == origin else into / file.relative_to(origin)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copy)
    return target


def in_image(root: Path, value: str) -> str:
    """A variable's value with the image's absolute paths moved under root."""
    parts = value.split(":")
    return ":".join(
        SYSTEM_PATH if part == "$PATH" else f"{root}{part}" if part.startswith("/") else part
        for part in parts
    )


def scratch_folder() -> str | None:
    """Where the image's folder goes: RAM (/dev/shm) when it is big enough and allows
    executables, as the venv's 9,000 files take a busy disk 10 s to write and as long to
    delete; else the usual temporary folder."""
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.statvfs(shm).f_flag & os.ST_NOEXEC:
        return None
    return shm if shutil.disk_usage(shm).free > 2**30 else None


@pytest.fixture(scope="module")
def image(stages: list[Stage], ignore_patterns: list[str]) -> Iterator[Image]:
    """The build stage's RUN, as written, in the stage's environment (pip as configured on
    this machine, with its cache); then the final stage's environment and user."""
    build, final = stages
    user, uid = as_unprivileged_user()
    root = Path(tempfile.mkdtemp(prefix="wecom-hub-image-", dir=scratch_folder()))
    try:
        root.chmod(0o755)  # like `/`: the unprivileged user walks through it
        source = copy_context(build, root, ignore_patterns)
        version = build.base.removeprefix("python:").split("-")[0]
        bin_dir = root / "usr/local/bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").symlink_to(runnable_python(version, user))
        [run] = build.args_of("RUN")
        command = re.sub(r"^(--\S+\s+)*", "", run)  # --mount options are Docker's, not sh's
        env = {key: in_image(root, value) for key, value in build.env().items()}
        env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
        # Docker builds with umask 022: what root installs, the service's user reads.
        built = subprocess.run(
            ["/bin/sh", "-c", f"umask 022 && {command}"],  # RUN's shell form
            cwd=source,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        built_here = set(re.findall(r"Building wheel for (\S+)", built.stdout))
        assert built_here == {"wecom-hub"}, "a dependency without a binary wheel needs gcc"
        shutil.rmtree(source)  # the final stage has the venv only
        data = root / "data"
        data.mkdir(mode=0o700)
        os.chown(data, uid, uid)
        final_env = {key: in_image(root, value) for key, value in final.env().items()}
        yield Image(root, {**BASE_IMAGE_ENV, **final_env, "HOME": str(data)}, user, uid)
    finally:
        shutil.rmtree(root)


def test_the_venv_holds_an_ordinary_install(image: Image) -> None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = Path(image.env["VIRTUAL_ENV"]) / "lib" / version / "site-packages"
    assert (packages / "app" / "cli" / "__init__.py").is_file() and (
        packages / "migrations"
    ).is_dir()
    assert not list(packages.glob("__editable__*")) and not list(packages.glob("*.egg-link"))


def run(image: Image, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*image.user, *argv],
        cwd=image.path("/data"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def health_check(image: Image, final: Stage, port: int) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command, pointed at the port the test serves on."""
    [healthcheck] = final.args_of("HEALTHCHECK")
    command = exec_form(healthcheck.partition(" CMD ")[2])
    moved = [arg.replace(f":{SERVE_PORT}/", f":{port}/") for arg in command]
    return run(image, moved, image.env)


def process_environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if entry)


def process_uid(pid: int) -> int:
    [line] = [
        x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:")
    ]
    return int(line.split()[2])  # effective


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()


def start_serving(image: Image, argv: list[str], env: dict[str, str]) -> Served:
    port = free_port()
    log = image.root / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*image.user, *argv, "--host", "127.0.0.1", "--port", str(port)],
            cwd=image.path("/data"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, log, port)
    ready = wait_until(
        lambda: process.poll() is not None or answers_ok(f"{served.base}/healthz"), 30
    )
    if not ready or process.poll() is not None:
        process.kill()
        process.wait()
        raise AssertionError(served.output())
    return served


def stop(served: Served) -> int:
    """SIGTERM, as `docker stop` sends it, and the exit status within compose's grace."""
    process_stop(served.process, signal.SIGTERM, 20)
    return served.process.returncode


@pytest.fixture(scope="module")
def reachable_server(server_url: str) -> str:
    """The test server, if the unprivileged user can reach it: checked before the image is
    built, so that a skip costs nothing."""
    url = make_url(server_url)
    if os.geteuid() == 0 and (not url.host or "host" in url.query):
        pytest.skip(
            "the test Postgres is reached by a socket only root may open: set "
            "WECOM_HUB_TEST_DATABASE_URL to a TCP URL so the unprivileged user can connect"
        )
    return server_url


@pytest.fixture
def fresh_database(reachable_server: str) -> Iterator[str]:
    """A new database on the test server, by the URL a devops would write."""
    url = make_url(reachable_server)
    name = f"wecom_hub_container_{secrets.token_hex(4)}"
    admin = asyncpg_dsn(reachable_server)

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    yield url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def mounted(image: Image, service: dict[str, Any]) -> dict[str, str]:
    """The service's environment, naming the secrets' files where this test mounts them."""
    secrets_dir = f"{image.path(SECRETS_DIR)}/"
    given: dict[str, str] = service["environment"]
    return {name: value.replace(SECRETS_DIR, secrets_dir) for name, value in given.items()}


def mount_secrets(image: Image, password: str) -> dict[str, str]:
    """Readable by the service's user, as deploy/README.md has them written."""
    values = {"wecom_hub_secret_key": generate_key(), "postgres_password": password}
    folder = image.path(SECRETS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value + "\n")
        (folder / name).chmod(0o444)
    return values


async def migrated_to(url: str) -> str | None:
    connection = await asyncpg.connect(url)
    try:
        version: str | None = await connection.fetchval("SELECT version_num FROM alembic_version")
        return version
    finally:
        await connection.close()


@pytest.mark.usefixtures("reachable_server")  # first: a skip before the build
def test_compose_services_migrate_and_serve_as_the_image_runs_them(
    image: Image, stages: list[Stage], compose: dict[str, Any], fresh_database: str
) -> None:
    helped = run(image, ["wecom-hub", "--help"], image.env)
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "worker", "migrate", "sim"):
        assert f" {command} " in helped.stdout, command

    # The password in the file, not the URL: the server's own when it asks for one (then
    # checked), any when it trusts the test's connections.
    server = make_url(fresh_database)
    values = mount_secrets(image, server.password or secrets.token_hex(8))
    url = server.set(password=None).render_as_string()
    services = compose["services"]
    [image_entrypoint] = stages[-1].args_of("ENTRYPOINT")
    entrypoint = exec_form(image_entrypoint)

    def environment(name: str) -> dict[str, str]:
        return image.env | mounted(image, services[name]) | {"WECOM_HUB_DATABASE_URL": url}

    migrate = services["migrate"]
    migrated = run(image, [*entrypoint, *migrate["command"]], environment("migrate"))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert asyncio.run(migrated_to(fresh_database))

    serve = services["serve"]
    served = start_serving(image, [*entrypoint, *serve["command"]], environment("serve"))
    try:
        pid = served.process.pid
        assert process_uid(pid) == image.uid != 0
        # Serving on a database URL needs the key: it was read from its file.
        given = process_environment(pid)
        assert given["WECOM_HUB_SECRET_KEY_FILE"].endswith(f"{SECRETS_DIR}wecom_hub_secret_key")
        for value in values.values():
            assert not [name for name, text in given.items() if value in text], "a secret"
        assert health_check(image, stages[-1], served.port).returncode == 0
    finally:
        status = stop(served)
    assert status == 0, served.output()
    failed = health_check(image, stages[-1], served.port)
    assert failed.returncode != 0, "nothing listens any more: unhealthy"


def test_image_default_command_serves_on_an_embedded_postgres_in_the_data_volume(
    image: Image, stages: list[Stage]
) -> None:
    final = stages[-1]
    [entrypoint], [cmd] = final.args_of("ENTRYPOINT"), final.args_of("CMD")
    runtime = image.path("/run/user")  # platformdirs' lock folder, here instead of /tmp
    runtime.mkdir(mode=0o700, parents=True)
    os.chown(runtime, image.uid, image.uid)
    env = image.env | {"XDG_RUNTIME_DIR": str(runtime)}
    served = start_serving(image, [*exec_form(entrypoint), *exec_form(cmd)], env)
    try:
        assert process_uid(served.process.pid) == image.uid != 0
    finally:
        status = stop(served)
    assert status == 0, served.output()
    data = image.path("/data")
    key = data / "secret.key"
    assert key.stat().st_uid == image.uid and key.stat().st_mode & 0o777 == 0o600
    assert (data / "postgres" / "PG_VERSION").is_file()
    assert not (data / "postgres" / "postmaster.pid").exists(), "Postgres stopped with serve"
