"""`wecom-hub apps`: the WeCom apps, one callback URL each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.errors import FieldError, Invalid

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app import wecom_apps
    from app.crypto.at_rest import SecretBox

from app.cli.common import (
    add_row,
    console,
    current_settings,
    given,
    in_transaction,
    refusals,
    secrets_given,
)

apps_cli = typer.Typer(no_args_is_help=True, help="WeCom apps: one callback URL each.")

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

    with refusals():
        spec = wecom_apps.app_spec(
            given(slug=slug, corp_id=corp_id, agent_id=agent_id, label=label)
            | secrets_given(token=token, aes_key=aes_key, secret=secret)
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
        add_row(
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
            **{
                field: wecom_apps.mask(wecom_apps.open_secret(box, app, field))
                for field in wecom_apps.SECRET_FIELDS
            },
            "created": view.created_at.isoformat(),
        }

    with refusals():
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

    with refusals():
        changes = given(agent_id=agent_id, label=label) | secrets_given(
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
def apps_remove(
    slug: Annotated[str, typer.Argument()],
    force: Annotated[
        bool, typer.Option("--force", help="Disable the app's enabled rules too.")
    ] = False,
) -> None:
    """Stop accepting callbacks for an app; its stored events are kept. Refused while
    enabled rules are for it (they would never apply again), unless --force."""
    from app import wecom_apps

    with refusals():
        disabled = in_transaction(
            lambda session, box: wecom_apps.remove_app(session, slug, force=force)
        )
    console.print(f"removed app {slug!r}", highlight=False)
    if disabled:
        console.print(
            f"disabled its rules {', '.join(map(str, disabled))}: point one at another app "
            "with `rules update ID --app SLUG`, then `rules enable ID`",
            highlight=False,
        )
