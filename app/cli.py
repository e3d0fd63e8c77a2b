"""`wecom-hub`: serve, migrate, manage apps. Thin: each command calls the same functions as HTTP."""

# The service itself (web server, ORM models, WeCom client, simulator) is imported inside the
# commands that use it: all of it takes seconds to import on a small machine, and `--help`
# or `apps list` should answer at once.

from __future__ import annotations

import ast
import asyncio
import errno
import gc
import json
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.errors import AppError, FieldError, Invalid
from app.simulator.cli import sim_cli

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app import apikeys, wecom_apps
    from app.config import Settings
    from app.crypto.at_rest import SecretBox
    from app.sync import Summary

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
apps_cli = typer.Typer(no_args_is_help=True, help="WeCom apps: one callback URL each.")
cli.add_typer(apps_cli, name="apps")
cli.add_typer(sim_cli, name="sim")
console = Console()
T = TypeVar("T")


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived loop on uvloop where it is installed (uvicorn[standard] brings it),
    as `serve` does: socket writes and timers in C, not in Python."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def freeze_startup_objects() -> None:
    """Move everything alive now (modules, ORM mappers, settings) out of the garbage
    collector's reach. They live for ever; without this each full collection walks all of
    them mid-request, which showed as 40-60 ms stalls in bench/ingest.py."""
    gc.collect()
    gc.freeze()


def exit_cleanly_on_sigterm() -> None:
    """After its graceful shutdown uvicorn re-raises the SIGTERM it caught. With the default
    action the process would die there, before atexit stops the embedded Postgres; exiting
    normally instead lets it stop cleanly (docker stop, systemd, kill)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def invoked_as() -> str:
    """How to run wecom-hub again, as this user can: `wecom-hub` if that is on PATH,
    else the path they typed (`.venv/bin/wecom-hub`), so that printed hints work as given."""
    me = Path(sys.argv[0]).resolve()
    on_path = shutil.which("wecom-hub")
    if on_path and Path(on_path).resolve() == me:
        return "wecom-hub"
    return sys.argv[0]


def current_settings() -> Settings:
    from app.config import get_settings

    return get_settings()


def listen(host: str, port: int, option: str) -> socket.socket:
    """The server's socket, bound now: a port in use is then one line naming the option to
    change, said before anything claims to be listening (uvicorn binds only after its
    startup, and says it in a log line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            _complain(
                f"port {port} on {host} is in use (another wecom-hub serve or demo?): stop "
                f"that, or choose another port with {option}"
            )
        else:
            _complain(f"cannot listen on {host}:{port} ({exc.strerror}): choose with {option}")
        raise typer.Exit(1) from None
    return sock


def prepare_database(settings: Settings) -> str:
    """Database URL, starting the embedded Postgres if needed, reachable, migrated to head."""
    from app import runtime
    from app.db import upgrade_database

    try:
        url = runtime.database_url(settings)
    except runtime.ConfigurationError as exc:
        _complain(str(exc))
        raise typer.Exit(2) from None
    if _schema_versions(url, settings) != _migration_heads():
        upgrade_database(url)
    return url


def _schema_versions(url: str, settings: Settings) -> set[str]:
    """The migrations the database is at (none on a new one), read on a first connection
    made with the service's own timeout: a database that cannot be used is then one line,
    not a traceback from deep inside the migrations (which would also wait for the
    system's connect timeout, not ours)."""
    import asyncpg

    from app.db import asyncpg_dsn

    async def read() -> set[str]:
        timeout = settings.database_timeout_seconds
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
        try:
            rows = await connection.fetch("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            return set()
        finally:
            await connection.close()
        return {row["version_num"] for row in rows}

    try:
        return asyncio.run(read())
    except Exception as exc:
        if not _database_refused(exc):
            raise
        _no_database(url, settings, exc)


def _migration_heads() -> set[str] | None:
    """The latest migrations, read from the migration files' own `revision` and
    `down_revision`: when the database is at them Alembic would do nothing, and importing
    it alone costs a fifth of a second. None if a file does not say them plainly; then
    Alembic decides."""
    import migrations

    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(migrations.__file__).parent / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        said = _assigned(path)
        try:
            revision = ast.literal_eval(said["revision"])
            down = ast.literal_eval(said["down_revision"])
        except (KeyError, ValueError):
            return None
        revisions.add(revision)
        parents.update([down] if isinstance(down, str) else down or ())
    return revisions - parents


def _assigned(path: Path) -> dict[str, ast.expr]:
    """What a module's top level assigns to each name."""
    said: dict[str, ast.expr] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            said |= {t.id: node.value for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and node.value and isinstance(node.target, ast.Name):
            said[node.target.id] = node.value
    return said


def _database_refused(exc: BaseException) -> bool:
    """Postgres is unreachable, or reachable but refuses us (wrong password, no such
    database): either way the URL or the server is what to check."""
    import asyncpg

    from app.db import is_unavailable

    return is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError)


def _no_database(url: str, settings: Settings, exc: BaseException) -> NoReturn:
    from sqlalchemy.engine import make_url

    shown = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
    if settings.database_url:
        check = (
            "check that Postgres runs there and that the host, port, user, password and "
            "database in WECOM_HUB_DATABASE_URL are right"
        )
    else:
        check = f"check the embedded Postgres in {settings.data_dir.resolve() / 'postgres'}"
    _complain(f"cannot use the database {shown} ({_why(exc, settings)}): {check}")
    raise typer.Exit(1)


def _why(exc: BaseException, settings: Settings) -> str:
    """The cause in a few words: the driver's own error, without SQLAlchemy's wrapping."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"no answer in {settings.database_timeout_seconds:g} s"
    text = (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
    return text.splitlines()[0] if text else type(cause).__name__


def secret_box(settings: Settings) -> SecretBox:
    from app import runtime

    try:
        return runtime.secret_box(settings)
    except runtime.ConfigurationError as exc:
        _complain(str(exc))
        raise typer.Exit(2) from None


def in_transaction(work: Callable[[AsyncSession, SecretBox], Awaitable[T]]) -> T:
    """Run one unit of work in one transaction, committed when `work` returns."""
    from app.db import create_engine, create_sessionmaker

    settings = current_settings()
    url = prepare_database(settings)
    box = secret_box(settings)

    async def run() -> T:
        engine = create_engine(url, settings, pool_size=1)
        try:
            async with create_sessionmaker(engine).begin() as session:
                return await work(session, box)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        if not _database_refused(exc):
            raise
        _no_database(url, settings, exc)  # lost since it was checked


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the service: callback endpoint, API, health and metrics."""
    import uvicorn

    from app import logs
    from app.main import create_app

    settings = current_settings()
    logs.configure(settings.log_level, settings.log_format)
    sock = listen(host, port, "--port")
    url = prepare_database(settings)
    secret_box(settings)  # fail now, not on the first callback
    me = invoked_as()
    lines = [
        f"wecom-hub listening on http://{host}:{port}",
        f"  callback URL of an app:  http://{host}:{port}/callback/<slug>",
        f"  add an app:  {me} apps add --slug S --corp-id C --token T --aes-key K --secret X",
    ]
    if not settings.database_url:
        lines.append(f"  embedded Postgres in {settings.data_dir.resolve() / 'postgres'}")
    console.print("\n".join(lines), soft_wrap=True, highlight=False)
    app = create_app(settings, database_url=url)
    freeze_startup_objects()
    exit_cleanly_on_sigterm()
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_seconds)),
        limit_concurrency=settings.serve_limit_concurrency,
        timeout_keep_alive=settings.serve_keep_alive_seconds,
    )
    sockets = [sock]
    if settings.admin_port is not None:  # /metrics, /docs and the schema answer only there
        sockets.append(listen(host, settings.admin_port, "WECOM_HUB_ADMIN_PORT"))
    uvicorn.Server(config).run(sockets=sockets)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="wecom-hub's port.")] = 8000,
    sim_port: Annotated[int, typer.Option(help="The simulated WeCom's port.")] = 9000,
) -> None:
    """The whole loop on this machine: wecom-hub, a simulated WeCom, a new customer. It
    keeps its own database (in the data folder's demo/), apart from your apps."""
    from app import logs
    from app.simulator.demo import demo_settings, run_demo

    settings = demo_settings(current_settings())
    logs.configure("WARNING")
    hub_socket = listen("127.0.0.1", port, "--port")
    sim_socket = listen("127.0.0.1", sim_port, "--sim-port")
    url = prepare_database(settings)
    box = secret_box(settings)
    run_fast(
        run_demo(
            settings,
            url,
            box,
            hub_socket=hub_socket,
            sim_socket=sim_socket,
            command=invoked_as(),
            console=console,
        )
    )


@cli.command()
def worker(
    only: Annotated[
        str | None,
        typer.Option(help="Run one loop: `events` (the processor) or `actions` (the runner)."),
    ] = None,
) -> None:
    """Process events and run actions, without HTTP: scale out with more of these."""
    from app import logs
    from app.processing import workers

    if only not in (None, *workers.LOOPS):
        console.print(f"[red]--only must be one of {', '.join(sorted(workers.LOOPS))}[/red]")
        raise typer.Exit(2)
    loops = workers.LOOPS if only is None else frozenset({only})
    settings = current_settings()
    logs.configure(settings.log_level, settings.log_format)
    url = prepare_database(settings)
    box = secret_box(settings)

    async def run() -> None:
        # SIGTERM (docker stop, systemd, Kubernetes) and SIGINT only set an event that the
        # loop itself waits on: raising from a signal handler could surface inside whatever
        # callback runs at that moment (an aiohttp transport's, under uvloop), be swallowed
        # there, and leave the process running for ever.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with workers.running(settings, url, box, loops=loops) as tasks:
            console.print(f"wecom-hub worker running ({len(tasks)} loops)", highlight=False)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        # Leaving `running` stopped the loops: work in hand finished or was released.

    freeze_startup_objects()
    run_fast(run())


@cli.command()
def sync(
    app: Annotated[str, typer.Option("--app", help="Slug of the app to import for.")],
) -> None:
    """Import the corp's existing customers, groups and tags (resumable, idempotent)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from app import logs, wecom_apps
    from app.db import create_engine, create_sessionmaker
    from app.sync import Sync, SyncBusy
    from app.wecom.errors import WecomApiError
    from app.wecom.factory import open_client

    settings = current_settings()
    logs.configure("WARNING")
    url = prepare_database(settings)
    box = secret_box(settings)

    async def run() -> Summary:
        engine = create_engine(url, settings)
        sessionmaker = create_sessionmaker(engine)
        try:
            async with sessionmaker() as session:
                found = await wecom_apps.find_app(session, app)
                if found is None:
                    console.print(f"[red]no app {app!r}[/red]")
                    raise typer.Exit(1)
                credentials = await wecom_apps.load_credentials(session, box, found.id)
            async with open_client(settings, sessionmaker, box) as client:
                with Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    TextColumn("{task.completed:,}"),
                    console=console,
                ) as bar:
                    tasks = {
                        phase: bar.add_task(phase) for phase in ("tags", "customers", "groups")
                    }
                    return await Sync(
                        sessionmaker,
                        client,
                        credentials,
                        progress=lambda phase, n: bar.advance(tasks[phase], n),
                    ).run()
        finally:
            await engine.dispose()

    try:
        summary = asyncio.run(run())
    except WecomApiError as exc:
        console.print(f"[red]sync stopped: {exc}; run it again to resume[/red]")
        raise typer.Exit(1) from None
    except SyncBusy as exc:
        console.print(f"[red]{exc}; it resumes from the same place, no need for a second[/red]")
        raise typer.Exit(1) from None
    verb = "resumed and finished" if summary.resumed else "finished"
    counts = ", ".join(f"{n:,} {what}" for what, n in summary.counts.items())
    console.print(f"sync {summary.run_id} {verb}: {counts}", highlight=False)


@cli.command()
def migrate() -> None:
    """Run the database migrations to the latest version, and nothing else."""
    from app import logs

    settings = current_settings()
    logs.configure(settings.log_level, settings.log_format)
    prepare_database(settings)
    console.print("database is at the latest migration")


@cli.command("secret-key")
def secret_key() -> None:
    """Print a new value for WECOM_HUB_SECRET_KEY."""
    from app.crypto.at_rest import generate_key

    print(generate_key())


def _complain(text: str) -> None:
    """As it is: no rich markup, so `[a-z0-9_-]` in a message is printed, not swallowed."""
    console.print(text, style="red", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _refusals() -> Iterator[None]:
    """A service's refusal as `field: message` lines, and the exit code scripts branch on:
    2 for invalid input, 1 for the rest (not found, conflict)."""
    try:
        yield
    except Invalid as exc:
        for error in exc.errors:
            _complain(str(error))
        raise typer.Exit(2) from None
    except AppError as exc:
        _complain(exc.detail)
        raise typer.Exit(1) from None


def _add_row(table: Table, *cells: str) -> None:
    """Cells as text: a table would read `[…]` in a label or a rule as rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def _given(**options: object) -> dict[str, object]:
    """The options given on the command line: a patch changes only those."""
    return {name: value for name, value in options.items() if value is not None}


def _secrets(**options: str | None) -> dict[str, str]:
    """The secrets given; each given as `-` is read from stdin, one line each in the order
    of the options, so that none has to be in the shell's history or in `ps`."""
    found = {}
    for name, value in options.items():
        if value == "-":
            line = sys.stdin.readline()
            if not line:
                raise Invalid([FieldError(name, "given as `-`, but stdin has no line for it")])
            value = line.rstrip("\r\n")
        if value is not None:
            found[name] = value
    return found


_FROM_STDIN = "`-`: read a line from stdin."
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="WECOM_HUB_APP_TOKEN", help=f"Callback Token. {_FROM_STDIN}"),
]
AesKeyOption = Annotated[
    str | None,
    typer.Option(envvar="WECOM_HUB_APP_AES_KEY", help=f"Callback EncodingAESKey. {_FROM_STDIN}"),
]
SecretOption = Annotated[
    str | None,
    typer.Option(envvar="WECOM_HUB_APP_SECRET", help=f"The app's Secret. {_FROM_STDIN}"),
]
LabelOption = Annotated[str | None, typer.Option(help="A name for people.")]
AgentIdOption = Annotated[int | None, typer.Option(help="AgentId; none for 客户联系.")]


@apps_cli.command("add")
def apps_add(
    slug: Annotated[str, typer.Option(help="Last part of the callback URL.")],
    corp_id: Annotated[str, typer.Option(help="CorpID (ww…), the ReceiveId of callbacks.")],
    token: TokenOption = None,
    aes_key: AesKeyOption = None,
    secret: SecretOption = None,
    agent_id: AgentIdOption = None,
    label: LabelOption = None,
) -> None:
    """Register a WeCom app; its callback URL is /callback/SLUG."""
    from app import wecom_apps

    with _refusals():
        spec = wecom_apps.app_spec(
            _given(slug=slug, corp_id=corp_id, agent_id=agent_id, label=label)
            | _secrets(token=token, aes_key=aes_key, secret=secret)
        )

        async def add(session: AsyncSession, box: SecretBox) -> wecom_apps.AppView:
            return wecom_apps.app_view(await wecom_apps.add_app(session, box, spec))

        view = in_transaction(add)
    console.print(f"added app {view.slug!r}: callback URL path {view.callback_path}")


@apps_cli.command("list")
def apps_list() -> None:
    """List the apps."""
    from app import wecom_apps

    async def views(session: AsyncSession, box: SecretBox) -> list[wecom_apps.AppView]:
        return [wecom_apps.app_view(a) for a in await wecom_apps.list_apps(session)]

    table = Table("slug", "corp_id", "agent_id", "label", "callback path")
    for view in in_transaction(views):
        _add_row(
            table, view.slug, view.corp_id, str(view.agent_id or ""), view.label, view.callback_path
        )
    console.print(table)


@apps_cli.command("show")
def apps_show(slug: Annotated[str, typer.Argument()]) -> None:
    """Show one app; secrets are masked."""
    from app import wecom_apps

    async def describe(session: AsyncSession, box: SecretBox) -> dict[str, str]:
        app = await wecom_apps.get_app(session, slug)
        view = wecom_apps.app_view(app)
        return {
            "slug": view.slug,
            "corp_id": view.corp_id,
            "agent_id": str(view.agent_id or ""),
            "label": view.label,
            "callback path": view.callback_path,
            "token": wecom_apps.mask(box.open(app.token_sealed, purpose="app.token")),
            "aes_key": wecom_apps.mask(box.open(app.aes_key_sealed, purpose="app.aes_key")),
            "secret": wecom_apps.mask(box.open(app.secret_sealed, purpose="app.secret")),
            "created": view.created_at.isoformat(),
        }

    with _refusals():
        info = in_transaction(describe)
    for key, value in info.items():
        console.print(f"{key:>14}: {value}", markup=False, highlight=False)


@apps_cli.command("update")
def apps_update(
    slug: Annotated[str, typer.Argument()],
    token: TokenOption = None,
    aes_key: AesKeyOption = None,
    secret: SecretOption = None,
    agent_id: AgentIdOption = None,
    label: LabelOption = None,
) -> None:
    """Change an app's label or AgentId, or rotate its Token, EncodingAESKey or Secret."""
    from app import wecom_apps

    with _refusals():
        changes = _given(agent_id=agent_id, label=label) | _secrets(
            token=token, aes_key=aes_key, secret=secret
        )
        if not changes:
            raise Invalid([FieldError("", "nothing to change: give an option (see --help)")])
        patch = wecom_apps.app_patch(changes)
        in_transaction(lambda session, box: wecom_apps.update_app(session, box, slug, patch))
    console.print(
        f"updated app {slug!r}: {', '.join(changes)}; callbacks use new keys after at most "
        f"{current_settings().app_cache_seconds:g} s",
        highlight=False,
    )


@apps_cli.command("remove")
def apps_remove(slug: Annotated[str, typer.Argument()]) -> None:
    """Stop accepting callbacks for an app; its stored events are kept."""
    from app import wecom_apps

    with _refusals():
        in_transaction(lambda session, box: wecom_apps.remove_app(session, slug))
    console.print(f"removed app {slug!r}")


rules_cli = typer.Typer(no_args_is_help=True, help="Automation rules: welcome, tag, reply, churn.")
cli.add_typer(rules_cli, name="rules")


def _json(text: str | None, field: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid([FieldError(field, f"not JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise Invalid([FieldError(field, "must be a JSON object")])
    return value


def _cut(value: dict[str, Any], limit: int = 300) -> str:
    """Whole unless very long: `rules show ID` prints all of it."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


NameOption = Annotated[str | None, typer.Option(help="A name people recognise.")]
MatchOption = Annotated[
    str | None, typer.Option(help='JSON, e.g. {"state": "spring", "state_mode": "prefix"}')
]
ContentOption = Annotated[
    str | None, typer.Option(help='JSON, e.g. {"text": "欢迎 {customer_name}"}')
]
PriorityOption = Annotated[int | None, typer.Option(help="Higher wins among equals.")]
RuleId = Annotated[int, typer.Argument(help="The rule's id (`rules list`).")]


@rules_cli.command("add")
def rules_add(
    kind: Annotated[str, typer.Argument(help="welcome, tag, reply or churn")],
    name: NameOption = None,
    match: MatchOption = None,
    content: ContentOption = None,
    app: Annotated[str | None, typer.Option(help="Only for this app (default: all).")] = None,
    priority: PriorityOption = None,
    enabled: Annotated[
        bool, typer.Option("--enabled/--disabled", help="In force from the start, or not.")
    ] = True,
) -> None:
    """Add a rule; it is validated first (limits, placeholders, regexes, tag ids, files)."""
    from app.automations.store import create_rule, rule_spec

    media_dir = current_settings().media_dir
    with _refusals():
        spec = rule_spec(
            _given(
                kind=kind,
                name=name,
                app=app,
                priority=priority,
                match=_json(match, "match"),
                content=_json(content, "content"),
            )
            | {"enabled": enabled}
        )
        view = in_transaction(lambda session, box: create_rule(session, spec, media_dir=media_dir))
    console.print(f"added {view.kind} rule {view.id}: {view.name}", markup=False, highlight=False)


@rules_cli.command("list")
def rules_list(
    kind: Annotated[str | None, typer.Option(help="Only rules of this kind.")] = None,
    app: Annotated[str | None, typer.Option(help="Only the rules of this app.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Only enabled (disabled) rules.")
    ] = None,
    after: Annotated[int | None, typer.Option(help="Only ids lower than this: next page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=250)] = 50,
) -> None:
    """List the rules, newest first."""
    from app.automations.store import list_rules

    with _refusals():
        views = in_transaction(
            lambda session, box: list_rules(
                session, kind=kind, app=app, enabled=enabled, after_id=after, limit=limit
            )
        )
    table = Table("id", "kind", "name", "app", "priority", "enabled")
    for column in ("match", "content"):  # wrapped whole, not cut at the terminal's width
        table.add_column(column, overflow="fold")
    for view in views:
        _add_row(
            table,
            str(view.id),
            view.kind,
            view.name,
            view.app or "all",
            str(view.priority),
            "yes" if view.enabled else "no",
            _cut(view.match),
            _cut(view.content),
        )
    console.print(table)
    if len(views) == limit:
        console.print(f"more: the same with --after {views[-1].id}", highlight=False)


@rules_cli.command("show")
def rules_show(rule_id: RuleId) -> None:
    """Print a whole rule as JSON."""
    from app.automations.store import get_rule

    with _refusals():
        view = in_transaction(lambda session, box: get_rule(session, rule_id))
    typer.echo(view.model_dump_json(indent=2))


@rules_cli.command("update")
def rules_update(
    rule_id: RuleId,
    name: NameOption = None,
    match: MatchOption = None,
    content: ContentOption = None,
    app: Annotated[str | None, typer.Option(help="Only for this app from now on.")] = None,
    all_apps: Annotated[bool, typer.Option("--all-apps", help="For every app from now on.")] = (
        False
    ),
    priority: PriorityOption = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Turn the rule on (off).")
    ] = None,
) -> None:
    """Change a rule: the options given (match and content replace the old ones whole); the
    result is validated like a new rule."""
    from app.automations.store import rule_patch, update_rule

    media_dir = current_settings().media_dir
    with _refusals():
        if app is not None and all_apps:
            raise Invalid([FieldError("app", "give --app or --all-apps, not both")])
        changes = _given(
            name=name,
            app=app,
            priority=priority,
            enabled=enabled,
            match=_json(match, "match"),
            content=_json(content, "content"),
        ) | ({"app": None} if all_apps else {})
        if not changes:
            raise Invalid([FieldError("", "nothing to change: give an option (see --help)")])
        patch = rule_patch(changes)
        view = in_transaction(
            lambda session, box: update_rule(session, rule_id, patch, media_dir=media_dir)
        )
    console.print(f"rule {view.id} updated: {', '.join(changes)}", highlight=False)


def _set_enabled(rule_id: int, enabled: bool) -> None:
    from app.automations.store import set_enabled

    with _refusals():
        in_transaction(lambda session, box: set_enabled(session, rule_id, enabled))
    console.print(f"rule {rule_id}: {'enabled' if enabled else 'disabled'}", highlight=False)


@rules_cli.command("enable")
def rules_enable(rule_id: RuleId) -> None:
    """Enable a rule (refused while an enabled one of its kind and app has its name)."""
    _set_enabled(rule_id, True)


@rules_cli.command("disable")
def rules_disable(rule_id: RuleId) -> None:
    """Disable a rule, keeping it."""
    _set_enabled(rule_id, False)


@rules_cli.command("remove")
def rules_remove(rule_id: RuleId) -> None:
    """Delete a rule (actions it caused keep its name in their payload)."""
    from app.automations.store import delete_rule

    with _refusals():
        in_transaction(lambda session, box: delete_rule(session, rule_id))
    console.print(f"rule {rule_id}: removed", highlight=False)


apikeys_cli = typer.Typer(no_args_is_help=True, help="API keys for the REST API (/api/v1).")
cli.add_typer(apikeys_cli, name="apikeys")


@apikeys_cli.command("create")
def apikeys_create(
    name: Annotated[str, typer.Option(help="Who or what uses it, for people.")],
    scope: Annotated[
        str, typer.Option(help="read (lists, shows) < write (rules, tags, sends) < admin.")
    ],
) -> None:
    """Create a key and print it, this once: only a hash of it is kept."""
    from app import apikeys

    async def create(session: AsyncSession, box: SecretBox) -> tuple[apikeys.ApiKeyView, str]:
        return await apikeys.create_key(session, name=name, scope=scope)

    with _refusals():
        view, key = in_transaction(create)
    console.print(
        f"API key {view.id} ({view.scope}) for {view.name!r}; shown only now:",
        markup=False,
        highlight=False,
    )
    print(key)


@apikeys_cli.command("list")
def apikeys_list() -> None:
    """Every key, revoked ones too; the prefix identifies a key, the key is never shown."""
    from app import apikeys

    async def keys(session: AsyncSession, box: SecretBox) -> list[apikeys.ApiKeyView]:
        return await apikeys.list_keys(session)

    table = Table("id", "name", "scope", "prefix", "created", "last used", "revoked")
    for key in in_transaction(keys):
        _add_row(
            table,
            str(key.id),
            key.name,
            key.scope,
            key.prefix,
            key.created_at.isoformat(timespec="seconds"),
            key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "",
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    console.print(table)


@apikeys_cli.command("revoke")
def apikeys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id.")]) -> None:
    """Refuse the key from now on (on every replica within seconds)."""
    from app import apikeys

    async def revoke(session: AsyncSession, box: SecretBox) -> apikeys.ApiKeyView:
        return await apikeys.revoke_key(session, key_id)

    with _refusals():
        view = in_transaction(revoke)
    console.print(f"API key {view.id} ({view.name}) revoked", markup=False, highlight=False)


def main() -> None:
    cli()
