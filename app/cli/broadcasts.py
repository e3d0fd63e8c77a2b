"""`wecom-hub broadcasts`: 群发 to customers and customer groups, the same services as
/api/v1/broadcasts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from app.cli.common import (
    add_row,
    console,
    current_settings,
    in_transaction,
    print_page,
    refusals,
    with_wecom,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.crypto.at_rest import SecretBox
    from app.queries.broadcasts import BroadcastDetail
    from app.wecom.client import WecomClient

broadcasts_cli = typer.Typer(no_args_is_help=True, help="Broadcasts (群发) and their funnels.")

T = TypeVar("T")
BroadcastId = Annotated[int, typer.Argument(help="The broadcast's id (`broadcasts list`).")]
FUNNEL = ("audience", "tasks", "confirmed", "sent", "not_friend", "over_limit", "failed", "pending")


def _with_wecom(work: Callable[[AsyncSession, WecomClient, SecretBox], Awaitable[T]]) -> T:
    """One transaction, with a WeCom client for the calls it waits on (remind, cancel)."""

    async def in_one(
        sessions: async_sessionmaker[AsyncSession], client: WecomClient, box: SecretBox
    ) -> T:
        async with sessions.begin() as session:
            return await work(session, client, box)

    return with_wecom(in_one)


@broadcasts_cli.command("send")
def broadcasts_send(
    app: Annotated[str, typer.Option("--app", help="Slug of the app to send as.")],
    text: Annotated[str, typer.Option("--text", help="What the customers receive.")],
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag id; any of those given.")
    ] = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="A channel state; any of those given.")
    ] = None,
    channel: Annotated[
        list[int] | None,
        typer.Option("--channel", help="A channel id (`channels list`); any of those given."),
    ] = None,
    member: Annotated[
        list[str] | None, typer.Option("--member", help="Only customers of this member (userid).")
    ] = None,
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="To the customer groups this member owns, instead."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count, per member; send nothing.")
    ] = False,
) -> None:
    """Broadcast to the customers with any of the tags (and of the channels or channel
    states, and of the members, when given): one WeCom task per member, which the member
    sends from the client. Follow it with `broadcasts show`."""
    from pydantic import ValidationError

    from app.broadcasts import service
    from app.broadcasts.spec import BroadcastSpec
    from app.errors import Invalid, field_errors

    settings = current_settings()
    audience: dict[str, Any] = {
        key: value
        for key, value in (
            ("tags", tag),
            ("states", state),
            ("channels", channel),
            ("userids", member),
            ("owners", owner),
        )
        if value
    }
    with refusals():
        try:
            spec = BroadcastSpec.model_validate(
                {"app": app, "audience": audience, "content": {"text": text}, "dry_run": dry_run}
            )
        except ValidationError as exc:
            raise Invalid(field_errors(exc)) from None
        if spec.dry_run:
            resolved = in_transaction(lambda session, box: service.dry_run(session, spec))
            table = Table("member", "recipients", "tasks")
            for share in resolved.members:
                add_row(table, share.userid, str(share.recipients), str(share.tasks))
            console.print(table)
            console.print(
                f"dry run: {resolved.audience} would receive it; nothing was sent", highlight=False
            )
            return
        detail = in_transaction(
            lambda session, box: service.create(session, spec, settings=settings, by="CLI")
        )
    console.print(
        f"broadcast {detail.broadcast.id}: {detail.funnel.audience} recipients, "
        f"{len(detail.members)} member(s) to send it",
        highlight=False,
    )


@broadcasts_cli.command("list")
def broadcasts_list(
    app: Annotated[str | None, typer.Option(help="Only this app's broadcasts.")] = None,
    status: Annotated[
        str | None, typer.Option(help="sending, waiting, completed or cancelled.")
    ] = None,
    after: Annotated[int | None, typer.Option(help="Only ids lower than this: next page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=250)] = 50,
) -> None:
    """The broadcasts, newest first."""
    from app.queries.broadcasts import list_broadcasts

    with refusals():
        rows = in_transaction(
            lambda session, box: list_broadcasts(
                session, app=app, status=status, before_id=after, limit=limit
            )
        )
    table = Table("id", "app", "type", "status", "audience", "created")
    table.add_column("text", overflow="fold")
    for row in rows:
        add_row(
            table,
            str(row.id),
            row.app,
            row.chat_type,
            row.status,
            str(row.audience_size),
            row.created_at.isoformat(timespec="seconds"),
            str(row.content.get("text", ""))[:60],
        )
    print_page(table, rows, limit)


def _print(detail: BroadcastDetail) -> None:
    b = detail.broadcast
    console.print(
        f"broadcast {b.id} ({b.app}, {b.chat_type}): {b.status}; results read until "
        f"{b.horizon_at.isoformat(timespec='seconds')}",
        highlight=False,
    )
    console.print(
        "  ".join(f"{name} {getattr(detail.funnel, name)}" for name in FUNNEL), highlight=False
    )
    if detail.failures:
        console.print(
            "failed: " + ", ".join(f"{why} {n}" for why, n in detail.failures.items()),
            highlight=False,
        )
    if b.poll_error:
        console.print(f"last read: {b.poll_error}", highlight=False, markup=False)
    table = Table("member", "task", "msgid", *FUNNEL[3:], "reminders")
    for member in detail.members:
        for task in member.tasks:
            add_row(
                table,
                member.userid,
                task.status + (" (adopted)" if task.adopted else ""),
                task.msgid or (f"wecom.{task.errcode}" if task.errcode else "-"),
                *(str(getattr(member.funnel, name)) for name in FUNNEL[3:]),
                str(len(task.reminders)),
            )
    console.print(table)


@broadcasts_cli.command("show")
def broadcasts_show(broadcast_id: BroadcastId) -> None:
    """The broadcast's funnel, and each member's task."""
    from app.queries.broadcasts import get_broadcast

    with refusals():
        detail = in_transaction(lambda session, box: get_broadcast(session, broadcast_id))
    _print(detail)


@broadcasts_cli.command("remind")
def broadcasts_remind(broadcast_id: BroadcastId) -> None:
    """Remind the members who have not sent it yet (WeCom allows 3 reminders in 24 hours)."""
    from app.broadcasts import service

    with refusals():
        reminded = _with_wecom(
            lambda session, client, box: service.remind(session, client, box, broadcast_id)
        )
    for what, outcomes in (
        ("reminded", reminded.reminded),
        ("3 reminders in 24 h already (41094)", reminded.limited),
        ("already sent", reminded.already_sent),
        ("failed", reminded.failed),
    ):
        for outcome in outcomes:
            console.print(
                f"{outcome.userid}: {what}" + (f" ({outcome.error})" if outcome.error else ""),
                highlight=False,
                markup=False,
            )


@broadcasts_cli.command("cancel")
def broadcasts_cancel(broadcast_id: BroadcastId) -> None:
    """Stop the broadcast: members who have not sent it no longer can."""
    from app.broadcasts import service

    with refusals():
        cancelled = _with_wecom(
            lambda session, client, box: service.cancel(session, client, box, broadcast_id)
        )
    for outcome in cancelled.cancelled:
        console.print(f"{outcome.userid}: cancelled", highlight=False)
    for outcome in cancelled.already_sent:
        console.print(f"{outcome.userid}: had already sent it", highlight=False)
    for outcome in cancelled.failed:
        console.print(
            f"{outcome.userid}: not cancelled ({outcome.error}); cancel again to retry",
            highlight=False,
            markup=False,
        )
    _print(cancelled.broadcast)
