"""`wecom-hub sim`: run the simulated WeCom, and send it callbacks as WeCom would."""

import asyncio
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto.at_rest import SecretBox
from app.simulator.sender import SCENARIOS, Scenario, Target, send_many
from app.simulator.server import create_sim_app
from app.simulator.state import SimState

sim_cli = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console()


def registered_apps() -> list[tuple[str, str, str]]:
    """(slug, corp_id, secret) of every app in wecom-hub's database."""
    from app import cli, wecom_apps

    async def load(session: AsyncSession, box: SecretBox) -> list[tuple[str, str, str]]:
        apps = await wecom_apps.list_apps(session)
        return [(a.slug, a.corp_id, box.open(a.secret_sealed, purpose="app.secret")) for a in apps]

    return cli.in_transaction(load)


@sim_cli.command("serve")
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
    members: Annotated[int, typer.Option(help="Seed each corp with this many members…")] = 0,
    customers: Annotated[int, typer.Option(help="…each with this many customers…")] = 0,
    groups: Annotated[int, typer.Option(help="…and this many customer groups.")] = 0,
) -> None:
    """Run a fake WeCom API; every app registered in wecom-hub is a corp it knows."""
    state = SimState()
    for slug, corp_id, secret in registered_apps():
        state.corp(corp_id).secrets.add(secret)
        if members:
            state.seed(corp_id, members=members, customers_per_member=customers, groups=groups)
        console.print(f"corp {corp_id} (app {slug})", highlight=False)
    console.print(
        f"WeCom simulator on http://{host}:{port}: set WECOM_HUB_WECOM_API_BASE_URL to it; "
        f"calls it received: http://{host}:{port}/sim/calls",
        highlight=False,
    )
    uvicorn.run(create_sim_app(state), host=host, port=port, log_level="warning")


@sim_cli.command("send")
def send(
    scenario: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCENARIOS)}")],
    app: Annotated[str, typer.Option("--app", help="Slug of the wecom-hub app to call.")],
    hub: Annotated[str, typer.Option(help="wecom-hub's base URL.")] = "http://127.0.0.1:8000",
    sim: Annotated[str, typer.Option(help="The simulator, to register new customers.")] = (
        "http://127.0.0.1:9000"
    ),
    user: Annotated[str, typer.Option(help="The member (UserID).")] = "zhangsan",
    customer: Annotated[str, typer.Option(help="ExternalUserID; default: a new one.")] = "",
    state: Annotated[str, typer.Option(help="Channel state of the contact way.")] = "",
    chat: Annotated[str, typer.Option(help="ChatId for group scenarios.")] = "",
    content: Annotated[str, typer.Option(help="Text for `message`.")] = "你好",
    count: Annotated[int, typer.Option(help="How many callbacks.")] = 1,
    rate: Annotated[float, typer.Option(help="Callbacks per second.")] = 10.0,
) -> None:
    """Post encrypted callbacks to wecom-hub exactly as WeCom's servers would."""
    from app import cli, wecom_apps

    if scenario not in SCENARIOS:
        console.print(f"[red]unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}[/red]")
        raise typer.Exit(2)

    async def keys(session: AsyncSession, box: SecretBox) -> wecom_apps.AppKeys | None:
        found = await wecom_apps.find_app(session, app)
        return None if found is None else wecom_apps.open_keys(found, box)

    app_keys = cli.in_transaction(keys)
    if app_keys is None:
        console.print(f"[red]no app {app!r}[/red]")
        raise typer.Exit(1)
    target = Target(f"{hub.rstrip('/')}/callback/{app}", app_keys.crypt, sim.rstrip("/") or None)
    what = Scenario(user_id=user, customer=customer, state=state, chat_id=chat, content=content)
    asyncio.run(send_many(target, scenario, what, count=count, rate=rate, report=console.print))
