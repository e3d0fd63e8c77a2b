"""`wecom-hub`: serve, migrate, manage apps. Thin: each command calls the same functions as HTTP."""

import asyncio
import gc
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app import logs, runtime, wecom_apps
from app import sync as sync_module
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox, generate_key
from app.db import create_engine, create_sessionmaker, upgrade_database
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
        async with workers.running(settings, url, box, loops=loops) as tasks:
            console.print(f"wecom-hub worker running ({len(tasks)} loops)", highlight=False)
            await asyncio.gather(*tasks)

    freeze_startup_objects()
    exit_cleanly_on_sigterm()
    try:
        run_fast(run())
    except KeyboardInterrupt:
        pass


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


@apps_cli.command("add")
def apps_add(
    slug: Annotated[str, typer.Option(help="Last part of the callback URL.")],
    corp_id: Annotated[str, typer.Option(help="CorpID (ww…), the ReceiveId of callbacks.")],
    token: Annotated[str, typer.Option(help="Callback Token from the admin console.")],
    aes_key: Annotated[str, typer.Option(help="Callback EncodingAESKey (43 characters).")],
    secret: Annotated[str, typer.Option(help="The app's Secret, for API calls.")],
    agent_id: Annotated[int | None, typer.Option(help="AgentId; none for 客户联系.")] = None,
    label: Annotated[str, typer.Option(help="A name for people.")] = "",
) -> None:
    """Register a WeCom app; its callback URL is /callback/SLUG."""
    try:
        spec = wecom_apps.AppSpec.model_validate(
            {
                "slug": slug,
                "corp_id": corp_id,
                "token": token,
                "aes_key": aes_key,
                "secret": secret,
                "agent_id": agent_id,
                "label": label,
            }
        )
    except ValidationError as exc:
        for error in exc.errors():
            console.print(f"[red]{'.'.join(map(str, error['loc']))}: {error['msg']}[/red]")
        raise typer.Exit(2) from None

    async def add(session: AsyncSession, box: SecretBox) -> None:
        await wecom_apps.add_app(session, box, spec)

    try:
        in_transaction(add)
    except wecom_apps.AppExists as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"added app {slug!r}: callback URL path /callback/{slug}")


@apps_cli.command("list")
def apps_list() -> None:
    """List the apps."""

    async def rows(session: AsyncSession, box: SecretBox) -> list[tuple[str, ...]]:
        return [
            (a.slug, a.corp_id, str(a.agent_id or ""), a.label, f"/callback/{a.slug}")
            for a in await wecom_apps.list_apps(session)
        ]

    table = Table("slug", "corp_id", "agent_id", "label", "callback path")
    for row in in_transaction(rows):
        table.add_row(*row)
    console.print(table)


@apps_cli.command("show")
def apps_show(slug: Annotated[str, typer.Argument()]) -> None:
    """Show one app; secrets are masked."""

    async def describe(session: AsyncSession, box: SecretBox) -> dict[str, str] | None:
        app = await wecom_apps.find_app(session, slug)
        if app is None:
            return None
        return {
            "slug": app.slug,
            "corp_id": app.corp_id,
            "agent_id": str(app.agent_id or ""),
            "label": app.label,
            "callback path": f"/callback/{app.slug}",
            "token": wecom_apps.mask(box.open(app.token_sealed, purpose="app.token")),
            "aes_key": wecom_apps.mask(box.open(app.aes_key_sealed, purpose="app.aes_key")),
            "secret": wecom_apps.mask(box.open(app.secret_sealed, purpose="app.secret")),
            "created": app.created_at.isoformat(),
        }

    info = in_transaction(describe)
    if info is None:
        console.print(f"[red]no app {slug!r}[/red]")
        raise typer.Exit(1)
    for key, value in info.items():
        console.print(f"{key:>14}: {value}")


@apps_cli.command("remove")
def apps_remove(slug: Annotated[str, typer.Argument()]) -> None:
    """Stop accepting callbacks for an app; its stored events are kept."""

    async def remove(session: AsyncSession, box: SecretBox) -> bool:
        return await wecom_apps.remove_app(session, slug)

    if not in_transaction(remove):
        console.print(f"[red]no app {slug!r}[/red]")
        raise typer.Exit(1)
    console.print(f"removed app {slug!r}")


rules_cli = typer.Typer(no_args_is_help=True, help="Automation rules: welcome, tag, reply.")
cli.add_typer(rules_cli, name="rules")


def _json(text: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        console.print(f"[red]{what} is not JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        console.print(f"[red]{what} must be a JSON object[/red]")
        raise typer.Exit(2)
    return value


@rules_cli.command("add")
def rules_add(
    kind: Annotated[str, typer.Argument(help="welcome, tag or reply")],
    name: Annotated[str, typer.Option(help="A name people recognise.")],
    match: Annotated[
        str, typer.Option(help='JSON, e.g. {"state": "spring", "state_mode": "prefix"}')
    ],
    content: Annotated[str, typer.Option(help='JSON, e.g. {"text": "欢迎 {customer_name}"}')],
    app: Annotated[
        str | None, typer.Option("--app", help="Only for this app (default: all).")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher wins among equals.")] = 0,
) -> None:
    """Add a rule; it is validated first (limits, placeholders, regexes, tag ids)."""
    from app.automations.store import RuleInvalid, add_rule

    match_json, content_json = _json(match, "--match"), _json(content, "--content")

    async def add(session: AsyncSession, box: SecretBox) -> int:
        app_id = None
        if app is not None:
            found = await wecom_apps.find_app(session, app)
            if found is None:
                raise RuleInvalid([f"no app {app!r}"])
            app_id = found.id
        rule = await add_rule(
            session,
            kind=kind,
            name=name,
            match=match_json,
            content=content_json,
            app_id=app_id,
            priority=priority,
        )
        return rule.id

    try:
        rule_id = in_transaction(add)
    except RuleInvalid as exc:
        for problem in exc.problems:
            console.print(f"[red]{problem}[/red]", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"added {kind} rule {rule_id}: {name}", highlight=False)


@rules_cli.command("list")
def rules_list() -> None:
    """List the rules."""
    from sqlalchemy import select

    from app.models import Rule

    async def rows(session: AsyncSession, box: SecretBox) -> list[tuple[str, ...]]:
        rules = await session.scalars(
            select(Rule).order_by(Rule.kind, Rule.priority.desc(), Rule.id)
        )
        return [
            (
                str(r.id),
                r.kind,
                r.name,
                str(r.app_id or "all"),
                str(r.priority),
                "yes" if r.enabled else "no",
                json.dumps(r.match, ensure_ascii=False),
                json.dumps(r.content, ensure_ascii=False)[:60],
            )
            for r in rules
        ]

    table = Table("id", "kind", "name", "app", "priority", "enabled", "match", "content")
    for row in in_transaction(rows):
        table.add_row(*row)
    console.print(table)


def _set_rule(rule_id: int, *, enabled: bool | None) -> None:
    from app.models import Rule

    async def change(session: AsyncSession, box: SecretBox) -> bool:
        rule = await session.get(Rule, rule_id)
        if rule is None:
            return False
        if enabled is None:
            await session.delete(rule)
        else:
            rule.enabled = enabled
        return True

    if not in_transaction(change):
        console.print(f"[red]no rule {rule_id}[/red]")
        raise typer.Exit(1)
    console.print(
        f"rule {rule_id}: " + {None: "removed", True: "enabled", False: "disabled"}[enabled]
    )


@rules_cli.command("enable")
def rules_enable(rule_id: int) -> None:
    """Enable a rule."""
    _set_rule(rule_id, enabled=True)


@rules_cli.command("disable")
def rules_disable(rule_id: int) -> None:
    """Disable a rule, keeping it."""
    _set_rule(rule_id, enabled=False)


@rules_cli.command("remove")
def rules_remove(rule_id: int) -> None:
    """Delete a rule (actions it caused keep its name in their payload)."""
    _set_rule(rule_id, enabled=None)


def main() -> None:
    cli()
