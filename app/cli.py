"""`wecom-hub`: serve, migrate, manage apps. Thin: each command calls the same functions as HTTP."""

import asyncio
import gc
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from app import logs, runtime, wecom_apps
from app import sync as sync_module
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox, generate_key
from app.db import create_engine, create_sessionmaker, upgrade_database
from app.errors import AppError, FieldError, Invalid
from app.processing import workers
from app.simulator.cli import sim_cli
from app.wecom.errors import WecomApiError

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


def _prepare(settings: Settings) -> str:
    """Database URL, starting the embedded Postgres if needed, migrated to head."""
    try:
        url = runtime.database_url(settings)
    except runtime.ConfigurationError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    upgrade_database(url)
    return url


def _box(settings: Settings) -> SecretBox:
    try:
        return runtime.secret_box(settings)
    except runtime.ConfigurationError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def in_transaction(work: Callable[[AsyncSession, SecretBox], Awaitable[T]]) -> T:
    """Run one unit of work in one transaction, committed when `work` returns."""
    settings = get_settings()
    url = _prepare(settings)
    box = _box(settings)

    async def run() -> T:
        engine = create_engine(url, settings, pool_size=1)
        try:
            async with create_sessionmaker(engine).begin() as session:
                return await work(session, box)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the service: callback endpoint, API, health and metrics."""
    from app.main import create_app

    settings = get_settings()
    logs.configure(settings.log_level)
    url = _prepare(settings)
    _box(settings)  # fail now, not on the first callback
    lines = [
        f"wecom-hub listening on http://{host}:{port}",
        f"  callback URL of an app:  http://{host}:{port}/callback/<slug>",
        "  add an app:  wecom-hub apps add --slug S --corp-id C --token T --aes-key K --secret X",
    ]
    if not settings.database_url:
        lines.append(f"  embedded Postgres in {settings.data_dir.resolve() / 'postgres'}")
    console.print("\n".join(lines), soft_wrap=True, highlight=False)
    app = create_app(settings, database_url=url)
    freeze_startup_objects()
    exit_cleanly_on_sigterm()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="wecom-hub's port.")] = 8000,
    sim_port: Annotated[int, typer.Option(help="The simulated WeCom's port.")] = 9000,
) -> None:
    """The whole loop on this machine: wecom-hub, a simulated WeCom, a new customer."""
    from app.simulator.demo import run_demo

    settings = get_settings()
    logs.configure("WARNING")
    url = _prepare(settings)
    box = _box(settings)
    exit_cleanly_on_sigterm()
    try:
        run_fast(run_demo(settings, url, box, port=port, sim_port=sim_port, console=console))
    except KeyboardInterrupt:
        pass


@cli.command()
def worker(
    only: Annotated[
        str | None,
        typer.Option(help="Run one loop: `events` (the processor) or `actions` (the runner)."),
    ] = None,
) -> None:
    """Process events and run actions, without HTTP: scale out with more of these."""
    if only not in (None, *workers.LOOPS):
        console.print(f"[red]--only must be one of {', '.join(sorted(workers.LOOPS))}[/red]")
        raise typer.Exit(2)
    loops = workers.LOOPS if only is None else frozenset({only})
    settings = get_settings()
    logs.configure(settings.log_level)
    url = _prepare(settings)
    box = _box(settings)

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

    from app.sync import Sync, SyncBusy
    from app.wecom.factory import open_client

    settings = get_settings()
    logs.configure("WARNING")
    url = _prepare(settings)
    box = _box(settings)

    async def run() -> sync_module.Summary:
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
    logs.configure(get_settings().log_level)
    _prepare(get_settings())
    console.print("database is at the latest migration")


@cli.command("secret-key")
def secret_key() -> None:
    """Print a new value for WECOM_HUB_SECRET_KEY."""
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
        f"{get_settings().app_cache_seconds:g} s",
        highlight=False,
    )


@apps_cli.command("remove")
def apps_remove(slug: Annotated[str, typer.Argument()]) -> None:
    """Stop accepting callbacks for an app; its stored events are kept."""
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

    media_dir = get_settings().media_dir
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

    media_dir = get_settings().media_dir
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
