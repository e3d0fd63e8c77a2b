"""Broadcasts as the API and the CLI manage them: create (or only count: dry run), remind,
cancel. Each takes a session and never commits: the caller owns the transaction.

Creating one checks what can be checked at once (the app, the tags, the content against
add_msg_template's limits, the files it names), resolves and stores the audience, and
enqueues one broadcast_task action per member's task and the first broadcast_results read,
all in the caller's transaction: a broadcast exists with all of its work, or not at all.

Remind and cancel are calls a request waits on (the operator wants WeCom's answer), made
with the Hub's WeCom client while the broadcast's row is locked, so two of them at once
are taken in turn.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind
from app.automations.media import upload_kind
from app.automations.rules import MediaAttachment
from app.broadcasts import audience as audiences
from app.broadcasts.results import poll_soon, schedule_poll, target
from app.broadcasts.spec import AudienceSpec, BroadcastContent, BroadcastSpec
from app.broadcasts.tasks import CANCELLED
from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.errors import AppError, BadGateway, Conflict, ErrorCode, FieldError, Invalid, NotFound
from app.models import Broadcast, BroadcastRecipient, Channel, MediaFile, Tag, WecomApp
from app.notify import ACTIONS_CHANNEL
from app.queries.broadcasts import BroadcastDetail, get_broadcast
from app.wecom.client import WecomClient
from app.wecom.errors import WecomApiError
from app.wecom_apps import app_by_slug, load_credentials

REMIND_LIMIT = 41094  # at most 3 reminders per mass message in 24 hours

# The tasks: a member's share of the audience, in chunks of WeCom's per-call limit.
_TASKS = text(
    """
    INSERT INTO broadcast_tasks (broadcast_id, userid, chunk, recipients)
    SELECT broadcast_id, userid, chunk, count(*) FROM broadcast_recipients
    WHERE broadcast_id = :id GROUP BY broadcast_id, userid, chunk
    """
)
# One broadcast_task action per task, linked back to it; the runners are woken on commit.
_ENQUEUE_TASKS = text(
    f"""
    WITH made AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, payload)
        SELECT '{ActionKind.BROADCAST_TASK}', :app_id, :corp_id, CAST(:target AS text),
               CAST(:target AS text) || ':' || userid || ':' || chunk,
               jsonb_build_object('broadcast_id', broadcast_id, 'task_id', id,
                                  'userid', userid, 'chunk', chunk)
        FROM broadcast_tasks WHERE broadcast_id = :id
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, CAST(payload ->> 'task_id' AS bigint) AS task_id
    )
    UPDATE broadcast_tasks t SET action_id = made.id FROM made WHERE t.id = made.task_id
    """  # noqa: S608 - constants only
)
_WAKE = text(f"SELECT pg_notify('{ACTIONS_CHANNEL}', '')")
_LOCK = text("SELECT status, app_id FROM broadcasts WHERE id = :id FOR UPDATE")
_REMINDABLE = text(
    """
    SELECT id, userid, msgid, status FROM broadcast_tasks
    WHERE broadcast_id = :id AND msgid IS NOT NULL ORDER BY userid, chunk
    """
)
_REMINDED = text(
    "UPDATE broadcast_tasks SET reminders = array_append(reminders, now()) WHERE id = :id"
)
_TASK_CANCELLED = text(
    "UPDATE broadcast_tasks SET status = 'cancelled' WHERE id = :id AND status = 'created'"
)
_CANCEL = text(
    "UPDATE broadcasts SET status = 'cancelled', cancelled_at = coalesce(cancelled_at, now()) "
    "WHERE id = :id"
)


class RemindLimit(AppError):
    """WeCom's 41094: a mass message may be reminded of 3 times in 24 hours."""

    status = 429
    code = ErrorCode.BROADCAST_REMIND_LIMIT
    title = "Too many requests"


class WecomFailed(BadGateway):
    """WeCom refused, or did not answer, a call the request waited on."""

    code = ErrorCode.BROADCAST_WECOM_FAILED


@dataclass(frozen=True, slots=True)
class MemberOutcome:
    userid: str
    msgid: str
    error: str | None = None  # `wecom.<errcode>: errmsg`


@dataclass(frozen=True, slots=True)
class Reminded:
    """Who was reminded; whose reminders WeCom refused (41094: 3 in 24 h); who had already
    sent (not reminded); whose reminder failed otherwise."""

    reminded: tuple[MemberOutcome, ...]
    limited: tuple[MemberOutcome, ...]
    already_sent: tuple[MemberOutcome, ...]
    failed: tuple[MemberOutcome, ...]


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The broadcast after the cancel, the tasks WeCom cancelled, those already sent (a
    cancel cannot unsend them), and those whose cancel failed (cancel again to retry)."""

    broadcast: BroadcastDetail
    cancelled: tuple[MemberOutcome, ...]
    already_sent: tuple[MemberOutcome, ...]
    failed: tuple[MemberOutcome, ...]


async def _checked(session: AsyncSession, spec: BroadcastSpec) -> tuple[WecomApp, AudienceSpec]:
    """The app, and the audience with its channels as their states, once the tags, channels
    and files the broadcast names are known; else Invalid naming each problem."""
    problems: list[FieldError] = []
    app = await app_by_slug(session, spec.app)
    audience = spec.audience
    if audience.channels:
        found = await session.execute(
            select(Channel.id, Channel.state).where(
                Channel.corp_id == app.corp_id,
                Channel.kind == "contact_way",
                Channel.id.in_(audience.channels),
            )
        )
        states = {channel_id: state for channel_id, state in found}
        unknown = [str(c) for c in audience.channels if c not in states]
        stateless = [str(c) for c, state in states.items() if not state]
        if unknown:
            problems.append(
                FieldError(
                    "audience.channels",
                    f"no 联系我 channel {', '.join(unknown)} for app {spec.app!r}",
                )
            )
        if stateless:
            problems.append(
                FieldError(
                    "audience.channels",
                    f"channel {', '.join(stateless)} has no state: its customers cannot be "
                    "told from others",
                )
            )
        chosen = [s for s in states.values() if s]
        audience = audience.model_copy(update={"states": [*audience.states, *chosen]})
    if spec.audience.tags:
        known = set(
            (
                await session.execute(
                    select(Tag.tag_id).where(
                        Tag.corp_id == app.corp_id,
                        Tag.tag_id.in_(spec.audience.tags),
                        Tag.deleted_at.is_(None),
                    )
                )
            ).scalars()
        )
        unknown = [tag for tag in spec.audience.tags if tag not in known]
        if unknown:
            problems.append(
                FieldError(
                    "audience.tags",
                    f"unknown tag id(s): {', '.join(unknown)} (run `wecom-hub sync`?)",
                )
            )
    problems += await _file_problems(session, spec.content)
    if problems:
        raise Invalid(problems)
    return app, audience


async def _file_problems(session: AsyncSession, content: BroadcastContent) -> list[FieldError]:
    """A file is named by the id of an upload (POST /api/v1/media), never by a path on the
    server, and must be of the attachment's kind."""
    problems = []
    named = {}
    for i, attachment in enumerate(content.attachments):
        if not isinstance(attachment, MediaAttachment):
            continue
        if attachment.file and not attachment.sha256:
            problems.append(
                FieldError(
                    f"content.attachments.{i}.file",
                    "a broadcast cannot name a path on the server; upload the file with "
                    "POST /api/v1/media and give its id as `sha256`",
                )
            )
        elif attachment.sha256:
            named[i] = attachment
    kept: dict[str, str] = {}
    if named:
        rows = await session.execute(
            select(MediaFile.sha256, MediaFile.kind).where(
                MediaFile.sha256.in_([a.sha256 for a in named.values()])
            )
        )
        kept = {row.sha256: row.kind for row in rows}
    for i, attachment in named.items():
        kind, wanted = kept.get(attachment.sha256 or ""), upload_kind(attachment)
        if kind is None:
            problems.append(FieldError(f"content.attachments.{i}.sha256", "names no uploaded file"))
        elif kind != wanted:
            problems.append(
                FieldError(
                    f"content.attachments.{i}.sha256",
                    f"names an upload of kind {kind}; a {attachment.msgtype} needs {wanted}",
                )
            )
    return problems


async def dry_run(session: AsyncSession, spec: BroadcastSpec) -> audiences.Resolved:
    """How many the broadcast would reach, per member; nothing is stored or sent."""
    app, audience = await _checked(session, spec)
    return await audiences.resolve(session, app.corp_id, audience)


async def create(
    session: AsyncSession, spec: BroadcastSpec, *, settings: Settings, by: str | None
) -> BroadcastDetail:
    """Store the broadcast and its audience, and enqueue its work (see the module's
    docstring). An audience that reaches nobody is refused (422 broadcast_empty_audience)."""
    app, audience = await _checked(session, spec)
    now = datetime.now(UTC)
    broadcast = Broadcast(
        app_id=app.id,
        corp_id=app.corp_id,
        chat_type=spec.audience.chat_type,
        audience=spec.stored_audience(),
        content=spec.content.model_dump(mode="json", exclude_none=True),
        status="sending",
        audience_size=0,
        created_by=by,
        horizon_at=now + timedelta(hours=settings.broadcast_horizon_hours),
    )
    session.add(broadcast)
    await session.flush()
    chosen = audiences.recipients(
        app.corp_id, audience, per_task=audiences.per_task(audience)
    ).subquery("chosen")
    stored = await session.execute(
        insert(BroadcastRecipient).from_select(
            ["broadcast_id", "recipient", "userid", "chunk"],
            select(literal(broadcast.id), chosen.c.recipient, chosen.c.userid, chosen.c.chunk),
        )
    )
    size = stored.rowcount  # type: ignore[attr-defined]  # a CursorResult
    if not size:
        raise Invalid(
            [FieldError("audience", "reaches nobody: no active follow (or live group) matches")],
            code=ErrorCode.BROADCAST_EMPTY_AUDIENCE,
        )
    broadcast.audience_size = size
    await session.execute(_TASKS, {"id": broadcast.id})
    await session.execute(
        _ENQUEUE_TASKS,
        {
            "id": broadcast.id,
            "app_id": app.id,
            "corp_id": app.corp_id,
            "target": target(broadcast.id),  # the idempotency key: broadcast:{id}:{userid}:{n}
        },
    )
    await schedule_poll(
        session,
        broadcast_id=broadcast.id,
        app_id=app.id,
        corp_id=app.corp_id,
        poll=0,
        at=now + timedelta(seconds=settings.broadcast_poll_seconds),
        poll_seconds=settings.broadcast_poll_seconds,
        poll_max_seconds=settings.broadcast_poll_max_seconds,
    )
    await session.execute(_WAKE)
    await session.flush()
    return await get_broadcast(session, broadcast.id)


async def _locked(session: AsyncSession, broadcast_id: int) -> tuple[str, int]:
    row = (await session.execute(_LOCK, {"id": broadcast_id})).first()
    if row is None:
        raise NotFound(f"no broadcast {broadcast_id}", code=ErrorCode.BROADCAST_NOT_FOUND)
    return str(row.status), int(row.app_id)


def _why(exc: WecomApiError) -> str:
    return f"wecom.{exc.errcode if exc.errcode is not None else 'unanswered'}: {exc.errmsg}"


async def remind(
    session: AsyncSession, client: WecomClient, box: SecretBox, broadcast_id: int
) -> Reminded:
    """remind_groupmsg_send for each task whose member has not sent it yet. WeCom allows 3
    reminders per task in 24 hours: when it refuses every one (41094), 429
    broadcast_remind_limit."""
    status, app_id = await _locked(session, broadcast_id)
    if status in ("completed", "cancelled"):
        raise Conflict(
            f"broadcast {broadcast_id} is {status}: there is nobody to remind",
            code=ErrorCode.BROADCAST_FINISHED,
        )
    tasks = list(await session.execute(_REMINDABLE, {"id": broadcast_id}))
    due = [t for t in tasks if t.status == "created"]
    if not due:
        why = "every member has sent it" if tasks else "its tasks are not made yet"
        raise Conflict(
            f"broadcast {broadcast_id}: nobody to remind ({why})",
            code=ErrorCode.BROADCAST_NOTHING_TO_REMIND,
        )
    credentials = await load_credentials(session, box, app_id)
    reminded, limited, failed = [], [], []
    for task in due:
        outcome = MemberOutcome(task.userid, task.msgid)
        try:
            await client.call(
                credentials,
                "POST",
                "externalcontact/remind_groupmsg_send",
                json={"msgid": task.msgid},
                max_attempts=1,  # each call that reaches WeCom counts towards its 3
            )
        except WecomApiError as exc:
            failed_one = MemberOutcome(task.userid, task.msgid, _why(exc))
            if exc.errcode == REMIND_LIMIT:
                limited.append(failed_one)
            else:
                if exc.errcode == CANCELLED:
                    await session.execute(_TASK_CANCELLED, {"id": task.id})
                failed.append(failed_one)
            continue
        await session.execute(_REMINDED, {"id": task.id})
        reminded.append(outcome)
    already = tuple(MemberOutcome(t.userid, t.msgid) for t in tasks if t.status == "sent")
    if not reminded and limited and not failed:
        raise RemindLimit(
            f"WeCom allows 3 reminders per task in 24 hours (41094); "
            f"{', '.join(m.userid for m in limited)} had theirs",
            extra={"members": [m.userid for m in limited]},
        )
    if not reminded:
        raise WecomFailed(
            "no reminder went out: " + "; ".join(f"{m.userid}: {m.error}" for m in failed + limited)
        )
    return Reminded(tuple(reminded), tuple(limited), already, tuple(failed))


async def cancel(
    session: AsyncSession, client: WecomClient, box: SecretBox, broadcast_id: int
) -> Cancelled:
    """Stop the broadcast: tasks not made yet never will be, and cancel_groupmsg_send for
    each task its member has not sent (41093, already cancelled, is fine). Those whose
    cancel fails stay as they are and are listed: cancelling again retries them. The last
    results are read at once, and the broadcast then completes as `cancelled`."""
    status, app_id = await _locked(session, broadcast_id)
    if status == "completed":
        raise Conflict(
            f"broadcast {broadcast_id} is completed: there is nothing left to cancel",
            code=ErrorCode.BROADCAST_FINISHED,
        )
    await session.execute(_CANCEL, {"id": broadcast_id})
    tasks = list(await session.execute(_REMINDABLE, {"id": broadcast_id}))
    cancelled, failed = [], []
    due = [t for t in tasks if t.status == "created"]
    credentials = await load_credentials(session, box, app_id) if due else None
    for task in due:
        assert credentials is not None
        try:
            await client.call(
                credentials,
                "POST",
                "externalcontact/cancel_groupmsg_send",
                json={"msgid": task.msgid},
            )
        except WecomApiError as exc:
            if exc.errcode != CANCELLED:
                failed.append(MemberOutcome(task.userid, task.msgid, _why(exc)))
                continue
        await session.execute(_TASK_CANCELLED, {"id": task.id})
        cancelled.append(MemberOutcome(task.userid, task.msgid))
    await poll_soon(session, broadcast_id)
    await session.flush()
    return Cancelled(
        broadcast=await get_broadcast(session, broadcast_id),
        cancelled=tuple(cancelled),
        already_sent=tuple(MemberOutcome(t.userid, t.msgid) for t in tasks if t.status == "sent"),
        failed=tuple(failed),
    )
