"""`wecom-hub sim`: run the simulated WeCom, send callbacks as WeCom would, scan 联系我
codes and confirm 群发 mass messages as members and customers would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from app.simulator.sender import SCENARIOS

if TYPE_CHECKING:
    import httpx
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
    from app.wecom_apps import open_secret

    return SimApp(
        slug=app.slug,
        corp_id=app.corp_id,
        secret=open_secret(box, app, "secret"),
        token=open_secret(box, app, "token"),
        aes_key=open_secret(box, app, "aes_key"),
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


def _fail(message: str) -> NoReturn:
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _simulated_app(app: str, sim: str) -> dict[str, str]:
    """The app's corp, Token and EncodingAESKey as the simulator knows them; exits 1 with a
    line saying why when the simulator does not answer or does not know the app."""
    import httpx

    try:
        answer = httpx.get(f"{sim}/sim/apps/{app}", timeout=5)
    except httpx.TransportError as exc:
        _fail(
            f"the simulator at {sim} did not answer ({exc!r}): start it with "
            "`wecom-hub sim serve`, or name it with --sim"
        )
    if answer.status_code != 200:
        _fail(f"the simulator at {sim} knows no app {app!r} ({answer.status_code})")
    keys: dict[str, str] = answer.json()
    return keys


def _refusal(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail", answer.text)
    except ValueError:
        detail = answer.text
    return f"{answer.status_code} {detail}"


SimOption = Annotated[str, typer.Option(help="The simulator's base URL.")]


@sim_cli.command("scan")
def scan(
    config_id: Annotated[str, typer.Argument(help="The 联系我 way's config_id.")],
    app: Annotated[str, typer.Option("--app", help="Slug of the wecom-hub app to call.")],
    hub: Annotated[str, typer.Option(help="wecom-hub's base URL.")] = "http://127.0.0.1:8000",
    sim: SimOption = "http://127.0.0.1:9000",
    customer: Annotated[str, typer.Option(help="ExternalUserID; default: a new one.")] = "",
) -> None:
    """A WeChat user scans a 联系我 code: the simulator makes them a customer of one of the
    way's members (in turn), then the add_external_contact callback, with the way's State
    and a WelcomeCode, is posted to wecom-hub."""
    import httpx

    from app.crypto import WXBizMsgCrypt
    from app.simulator.sender import Answer, Scanned, SendFailed, Target
    from app.simulator.sender import scan as scan_code

    sim = sim.rstrip("/")
    keys = _simulated_app(app, sim)
    crypt = WXBizMsgCrypt(
        token=keys["token"], encoding_aes_key=keys["aes_key"], receive_id=keys["corp_id"]
    )
    target = Target(f"{hub.rstrip('/')}/callback/{app}", crypt, sim)

    async def run() -> tuple[Scanned, Answer]:
        async with httpx.AsyncClient(timeout=10) as http:
            return await scan_code(http, target, config_id, customer=customer)

    try:
        scanned, answer = asyncio.run(run())
    except SendFailed as exc:
        _fail(str(exc))
    console.print(
        f"{scanned.external_userid} scanned {config_id} and added {scanned.userid} "
        f"(state {scanned.state!r}); wecom-hub answered {answer}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@sim_cli.command("confirm")
def confirm(
    msgid: Annotated[str, typer.Argument(help="The mass message (群发) msgid.")],
    app: Annotated[str, typer.Option("--app", help="Slug of the wecom-hub app.")],
    member: Annotated[str, typer.Option(help="The member (UserID) who sends; default: all.")] = "",
    sim: SimOption = "http://127.0.0.1:9000",
) -> None:
    """Members confirm a mass message in their client, and it is sent: each recipient as
    sent, not a friend any more, or over the corp's receive limit."""
    import httpx

    sim = sim.rstrip("/")
    corp_id = _simulated_app(app, sim)["corp_id"]
    url = f"{sim}/sim/corps/{corp_id}/msg_templates/{msgid}/confirm"
    try:
        answer = httpx.post(url, json={"userid": member or None}, timeout=10)
    except httpx.TransportError as exc:
        _fail(f"the simulator at {sim} did not answer ({exc!r})")
    if answer.status_code != 200:
        _fail(f"the simulator refused to confirm {msgid}: {_refusal(answer)}")
    result = answer.json()
    if result["cancelled"]:
        line = f"{msgid} was cancelled: nothing sent"
    elif not result["sent_by"]:
        line = f"{msgid}: nothing left to send"
    else:
        statuses = [r["status"] for r in result["recipients"]]
        line = (
            f"{', '.join(result['sent_by'])} sent {msgid}: {statuses.count(1)} sent, "
            f"{statuses.count(2)} not a friend, {statuses.count(3)} over the receive limit"
        )
    console.print(line, markup=False, highlight=False, soft_wrap=True)
