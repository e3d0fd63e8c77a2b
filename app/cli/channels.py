"""`wecom-hub channels`: 「联系我」 QR codes and group join ways, the same services as
/api/v1/channels (app/channels/service.py). Making, changing and removing a channel calls
WeCom (WECOM_HUB_WECOM_API_BASE_URL) as the app, while the command waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from app.cli.common import (
    add_row,
    complain,
    console,
    given,
    in_transaction,
    print_page,
    refusals,
    with_wecom,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.channels.service import Wecom

channels_cli = typer.Typer(no_args_is_help=True, help="Channels: 「联系我」 QR codes, join ways.")

T = TypeVar("T")
ChannelId = Annotated[int, typer.Argument(help="The channel's id (`channels list`).")]


def _with_wecom(work: Callable[[async_sessionmaker[AsyncSession], Wecom], Awaitable[T]]) -> T:
    """Run `work` with a sessionmaker and the channels' WeCom; it commits what it does."""
    from app.channels.service import Wecom

    return with_wecom(lambda sessions, client, box: work(sessions, Wecom(client, box)))


@channels_cli.command("add")
def channels_add(
    app: Annotated[str, typer.Option(help="Slug of the app whose corp the code is for.")],
    name: Annotated[str, typer.Option(help="A name people recognise (门店A).")],
    user: Annotated[
        list[str] | None, typer.Option("--user", help="A member customers are added to; repeat.")
    ] = None,
    party: Annotated[
        list[int] | None, typer.Option("--party", help="A department id whose members take part.")
    ] = None,
    chat: Annotated[
        list[str] | None,
        typer.Option("--chat", help="A customer group's chat_id: makes a join way; repeat (≤5)."),
    ] = None,
    remark: Annotated[str | None, typer.Option(help="WeCom's remark, ≤30 characters.")] = None,
    skip_verify: Annotated[
        bool,
        typer.Option("--skip-verify/--verify", help="Add customers without the member's OK."),
    ] = True,
    welcome: Annotated[
        str | None, typer.Option(help="Welcome text for the channel's customers.")
    ] = None,
    welcome_rule: Annotated[
        int | None, typer.Option(help="An existing welcome rule that also welcomes them.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag id every customer gets; repeat.")
    ] = None,
) -> None:
    """Make a channel at WeCom: a 「联系我」 code (or a join way, with --chat) and its state."""
    from pydantic import ValidationError

    from app.channels.service import ChannelSpec, create_channel
    from app.errors import Invalid, field_errors

    with refusals():
        try:
            spec = ChannelSpec.model_validate(
                given(
                    app=app,
                    name=name,
                    kind="join_way" if chat else "contact_way",
                    userids=user or None,
                    party_ids=party or None,
                    chat_ids=chat or None,
                    remark=remark,
                    welcome={"text": welcome} if welcome is not None else None,
                    welcome_rule_id=welcome_rule,
                    add_tags=tag or None,
                )
                | {"skip_verify": skip_verify}
            )
        except ValidationError as exc:
            raise Invalid(field_errors(exc)) from None
        view = _with_wecom(lambda sessionmaker, wecom: create_channel(sessionmaker, wecom, spec))
    console.print(
        f"added channel {view.id}: {view.name}\n  state    {view.state}\n"
        f"  qr_code  {view.qr_code or '(none yet)'}\n"
        f"  print it: wecom-hub channels qr {view.id} --out channel-{view.id}.png",
        markup=False,
        highlight=False,
    )


@channels_cli.command("list")
def channels_list(
    app: Annotated[str | None, typer.Option(help="Only the channels of this app.")] = None,
    kind: Annotated[str | None, typer.Option(help="contact_way or join_way.")] = None,
    after: Annotated[int | None, typer.Option(help="Only ids lower than this: next page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=250)] = 50,
) -> None:
    """List the channels, newest first."""
    from app.channels.service import list_channels

    with refusals():
        views = in_transaction(
            lambda session, box: list_channels(
                session, app=app, kind=kind, after_id=after, limit=limit
            )
        )
    table = Table("id", "kind", "name", "app")
    table.add_column("state", no_wrap=True)  # an identifier, copied whole
    for column in ("status", "source", "members"):
        table.add_column(column)
    for view in views:
        add_row(
            table,
            str(view.id),
            view.kind,
            view.name,
            view.app,
            view.state or "",
            view.status,
            view.source,
            ", ".join([*view.userids, *map(str, view.party_ids), *view.chat_ids]),
        )
    print_page(table, views, limit)


@channels_cli.command("show")
def channels_show(channel_id: ChannelId) -> None:
    """Print a channel as JSON."""
    from app.channels.service import get_channel

    with refusals():
        view = in_transaction(lambda session, box: get_channel(session, channel_id))
    typer.echo(view.model_dump_json(indent=2))


@channels_cli.command("remove")
def channels_remove(channel_id: ChannelId) -> None:
    """Delete the channel's code at WeCom, and the channel and its rules here."""
    from app.channels.service import delete_channel

    async def remove(sessionmaker: async_sessionmaker[AsyncSession], wecom: Wecom) -> None:
        async with sessionmaker.begin() as session:
            await delete_channel(session, wecom, channel_id)

    with refusals():
        _with_wecom(remove)
    console.print(f"removed channel {channel_id}", highlight=False)


@channels_cli.command("qr")
def channels_qr(
    channel_id: ChannelId,
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG.")],
) -> None:
    """Write the channel's QR code image (fetched from WeCom once, then kept)."""
    from app.channels.qr import channel_png

    with refusals():
        png = _with_wecom(lambda sessionmaker, wecom: channel_png(sessionmaker, wecom, channel_id))
    try:
        out.write_bytes(png)
    except OSError as exc:
        complain(f"cannot write {out}: {exc.strerror}")
        raise typer.Exit(1) from None
    console.print(f"wrote {out} ({len(png):,} bytes)", highlight=False)


@channels_cli.command("stats")
def channels_stats(
    channel_id: ChannelId,
    tz: Annotated[str, typer.Option(help="The time zone days are counted in.")] = "Asia/Shanghai",
) -> None:
    """The channel's numbers over the last 30 days: totals, then each day with any."""
    from datetime import UTC, datetime

    from app.channels.service import get_channel
    from app.queries.channels import COUNTS, ChannelCounts, ChannelRef, channel_stats
    from app.queries.stats import stats_window

    async def read(session: AsyncSession, box: object) -> tuple[ChannelCounts, list[ChannelCounts]]:
        view = await get_channel(session, channel_id)
        window = stats_window(
            since=None, until=None, tz=tz, corp_id=view.corp_id, now=datetime.now(UTC)
        )
        return await channel_stats(
            session, ChannelRef(view.corp_id, view.state, view.tag_rule_id), window
        )

    with refusals():
        totals, by_day = in_transaction(read)
    width = max(len(name) for name in COUNTS)
    lines = [f"channel {channel_id}, the last 30 days ({tz}):"]
    lines += [f"  {name:<{width}}  {getattr(totals, name):>7,}" for name in COUNTS]
    console.print("\n".join(lines), highlight=False)
    shown = ("added", "active", "churned", "churned_7d", "welcomed", "joined")
    table = Table("day", *shown)
    for day in by_day:
        if any(getattr(day, name) for name in COUNTS):
            add_row(table, day.key, *(str(getattr(day, name)) for name in shown))
    if table.row_count:
        console.print(table)
