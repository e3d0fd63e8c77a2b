"""`wecom-hub sim`: run the simulated WeCom, and send it callbacks as WeCom would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from app.simulator.sender import SCENARIOS

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.config import Settings
    from app.crypto import WXBizMsgCrypt
    from app.crypto.at_rest import SecretBox
    from app.models import WecomApp
    from app.simulator.state import SimApp, SimState

sim_cli = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console()


def sim_app(app: WecomApp, box: SecretBox) -> SimApp:
    """An app registered in wecom-hub, as WeCom's console knows it."""
    from app.simulator.state import SimApp

    return SimApp(
        slug=app.slug,
        corp_id=app.corp_id,
        secret=box.open(app.secret_sealed, purpose="app.secret"),
        token=box.open(app.token_sealed, purpose="app.token"),
        aes_key=box.open(app.aes_key_sealed, purpose="app.aes_key"),
    )


@dataclass(frozen=True)
class Seed:
    """What `sim serve` gives each corp it learns of (none by default)."""

    members: int
    customers: int
    groups: int


class RegisteredApps:
    """wecom-hub's apps, read again whenever the simulator meets a corp, Secret or app it
    does not know, so that apps added (or secrets rotated) after `sim serve` started work
    without a restart. A corp seen for the first time is seeded as --members etc. say."""

    def __init__(
        self, state: SimState, url: str, settings: Settings, box: SecretBox, *, seed: Seed
    ) -> None:
        self.state, self.url, self.settings, self.box, self.seed = state, url, settings, box, seed

    async def __call__(self) -> None:
        from app import wecom_apps
        from app.db import create_engine, create_sessionmaker

        engine = create_engine(self.url, self.settings, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session:
                apps = [sim_app(a, self.box) for a in await wecom_apps.list_apps(session)]
        finally:
            await engine.dispose()
        for app in apps:
            if app.slug not in self.state.apps:
                console.print(f"corp {app.corp_id} (app {app.slug})", highlight=False)
            if app.corp_id not in self.state.corps and self.seed.members:
                self.state.seed(
                    app.corp_id,
                    members=self.seed.members,
                    customers_per_member=self.seed.customers,
                    groups=self.seed.groups,
                )
            self.state.add_app(app)


@sim_cli.command("serve")
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
    members: Annotated[int, typer.Option(help="Seed each corp with this many members…")] = 0,
    customers: Annotated[int, typer.Option(help="…each with this many customers…")] = 0,
    groups: Annotated[int, typer.Option(help="…and this many customer groups.")] = 0,
) -> None:
    """Run a fake WeCom API; every app registered in wecom-hub (now or later) is a corp it
    knows."""
    import uvicorn

    from app.cli import common as cli
    from app.simulator.server import create_sim_app
    from app.simulator.state import SimState

    sock = cli.listen(host, port, "--port")
    settings = cli.current_settings()
    url = cli.prepare_database(settings)
    state = SimState()
    learn = RegisteredApps(
        state, url, settings, cli.secret_box(settings), seed=Seed(members, customers, groups)
    )
    asyncio.run(learn())
    state.learn = learn
    console.print(
        f"WeCom simulator on http://{host}:{port}: set WECOM_HUB_WECOM_API_BASE_URL to it; "
        f"calls it received: http://{host}:{port}/sim/calls",
        highlight=False,
    )
    cli.exit_cleanly_on_sigterm()
    uvicorn.Server(uvicorn.Config(create_sim_app(state), log_config=None)).run(sockets=[sock])


def _keys(app: str, sim: str) -> WXBizMsgCrypt | None:
    """The app's callback keys: from the simulator, which knows every app it was told of
    (the demo's too, which live in the demo's own database), else from wecom-hub's
    database; None if neither knows the app."""
    import httpx

    from app import wecom_apps
    from app.cli.common import in_transaction
    from app.crypto import WXBizMsgCrypt

    if sim:
        try:
            answer = httpx.get(f"{sim}/sim/apps/{app}", timeout=5)
        except httpx.TransportError:
            pass  # no simulator there: a callback that needs none can still be sent
        else:
            if answer.status_code == 200:
                keys = answer.json()
                return WXBizMsgCrypt(
                    token=keys["token"],
                    encoding_aes_key=keys["aes_key"],
                    receive_id=keys["corp_id"],
                )

    async def stored(session: AsyncSession, box: SecretBox) -> WXBizMsgCrypt | None:
        found = await wecom_apps.find_app(session, app)
        return None if found is None else wecom_apps.open_keys(found, box).crypt

    return in_transaction(stored)


@sim_cli.command("send")
def send(
    scenario: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCENARIOS)}")],
    app: Annotated[str, typer.Option("--app", help="Slug of the wecom-hub app to call.")],
    hub: Annotated[str, typer.Option(help="wecom-hub's base URL.")] = "http://127.0.0.1:8000",
    sim: Annotated[
        str, typer.Option(help="The simulator, told first what each callback says; '' for none.")
    ] = "http://127.0.0.1:9000",
    user: Annotated[str, typer.Option(help="The member (UserID).")] = "zhangsan",
    customer: Annotated[str, typer.Option(help="ExternalUserID; default: a new one.")] = "",
    state: Annotated[str, typer.Option(help="Channel state of the contact way.")] = "",
    chat: Annotated[str, typer.Option(help="ChatId for group scenarios.")] = "",
    content: Annotated[str, typer.Option(help="Text for `message` and `kf-message`.")] = "你好",
    open_kfid: Annotated[str, typer.Option(help="微信客服 account for `kf-message`.")] = (
        "wkSIMULATED"
    ),
    count: Annotated[int, typer.Option(help="How many callbacks.")] = 1,
    rate: Annotated[float, typer.Option(help="Callbacks per second.")] = 10.0,
) -> None:
    """Post encrypted callbacks to wecom-hub exactly as WeCom's servers would; exits 1
    unless every one is answered 200."""
    from app.simulator.sender import Scenario, Target, send_many

    if scenario not in SCENARIOS:
        console.print(f"[red]unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}[/red]")
        raise typer.Exit(2)
    sim = sim.rstrip("/")
    crypt = _keys(app, sim)
    if crypt is None:
        console.print(f"[red]no app {app!r}[/red]")
        raise typer.Exit(1)
    target = Target(f"{hub.rstrip('/')}/callback/{app}", crypt, sim or None)
    what = Scenario(
        user_id=user,
        customer=customer,
        state=state,
        chat_id=chat,
        content=content,
        open_kfid=open_kfid,
    )
    summary = asyncio.run(send_many(target, scenario, what, count=count, rate=rate))
    console.print(str(summary), markup=False, highlight=False, soft_wrap=True)
    if summary.failures:
        raise typer.Exit(1)
