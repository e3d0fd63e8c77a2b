"""The long-running commands and the one-shot ones around them: serve, demo, worker,
sync, migrate, secret-key."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from app.sync import Summary

from app.cli.common import (
    console,
    current_settings,
    exit_cleanly_on_sigterm,
    freeze_startup_objects,
    invoked_as,
    listen,
    prepare_database,
    run_fast,
    secret_box,
)


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
    app = create_app(settings, database_url=url, started=freeze_startup_objects)
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
            freeze_startup_objects()  # the pools and caches now exist too
            console.print(f"wecom-hub worker running ({len(tasks)} loops)", highlight=False)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        # Leaving `running` stopped the loops: work in hand finished or was released.

    freeze_startup_objects()
    run_fast(run())


def sync(
    app: Annotated[str, typer.Option("--app", help="Slug of the app to import for.")],
) -> None:
    """Import the corp's existing customers, members' names, groups, tags and 联系我 codes
    (resumable, idempotent)."""
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
                        phase: bar.add_task(phase)
                        for phase in ("tags", "members", "customers", "groups", "channels")
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
    for note in summary.notes:  # what was skipped, and why (a permission WeCom refused)
        console.print(note, style="yellow", markup=False, highlight=False)


def migrate() -> None:
    """Run the database migrations to the latest version, and nothing else."""
    from app import logs

    settings = current_settings()
    logs.configure(settings.log_level, settings.log_format)
    prepare_database(settings)
    console.print("database is at the latest migration")
