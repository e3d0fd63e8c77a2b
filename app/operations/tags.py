"""Tag a customer (externalcontact/mark_tag) on request: as the member given, or the one
the customer most recently became a friend of."""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import Enqueued, enqueue
from app.actions.kinds import ActionKind
from app.errors import Conflict, ErrorCode, FieldError, Invalid, NotFound
from app.models import ExternalContact, Follow, Tag
from app.operations.common import api_action_key, app_of_corp

TAG_DEADLINE_MINUTES = 10


@dataclass(frozen=True, slots=True)
class TagRequest:
    external_userid: str
    add: list[str]
    remove: list[str]
    userid: str | None = None


async def tag_customer(session: AsyncSession, request: TagRequest, *, by: str) -> Enqueued:
    if not request.add and not request.remove:
        raise Invalid([FieldError("add", "give tag ids to add or to remove")])
    if set(request.add) & set(request.remove):
        both = ", ".join(sorted(set(request.add) & set(request.remove)))
        raise Invalid([FieldError("remove", f"{both} cannot be both added and removed")])
    corp_id = await session.scalar(
        select(ExternalContact.corp_id)
        .where(ExternalContact.external_userid == request.external_userid)
        .order_by(ExternalContact.id)
        .limit(1)
    )
    if corp_id is None:
        raise NotFound(
            f"no customer {request.external_userid!r}", code=ErrorCode.CUSTOMER_NOT_FOUND
        )
    follow = select(Follow.userid).where(
        Follow.corp_id == corp_id,
        Follow.external_userid == request.external_userid,
        Follow.status == "active",
    )
    if request.userid is not None:
        follow = follow.where(Follow.userid == request.userid)
    userid = await session.scalar(follow.order_by(Follow.added_at.desc().nulls_last()).limit(1))
    if userid is None:
        whose = f"of {request.userid!r}" if request.userid else "of any member"
        raise Conflict(
            f"{request.external_userid!r} is not a friend {whose}: WeCom would refuse (84061)",
            code=ErrorCode.NOT_A_FRIEND,
        )
    await _check_tags(session, corp_id, request)
    app = await app_of_corp(session, corp_id)
    if app is None:
        raise Conflict(
            f"no app of corp {corp_id!r} to call WeCom as", code=ErrorCode.NO_APP_FOR_CORP
        )
    return await enqueue(
        session,
        kind=ActionKind.MARK_TAG,
        app_id=app.id,
        corp_id=corp_id,
        target=request.external_userid,
        idempotency_key=api_action_key(ActionKind.MARK_TAG),
        payload={
            "userid": userid,
            "add_tag": sorted(set(request.add)),
            "remove_tag": sorted(set(request.remove)),
            "requested_by": by,
        },
    )


async def _check_tags(session: AsyncSession, corp_id: str, request: TagRequest) -> None:
    """Unknown tag ids are refused now, not found out as WeCom's 40068 later."""
    wanted = [*request.add, *request.remove]
    known = set(
        await session.scalars(
            select(Tag.tag_id).where(
                Tag.corp_id == corp_id, Tag.tag_id.in_(wanted), Tag.deleted_at.is_(None)
            )
        )
    )
    problems = [
        FieldError(f"{field}.{i}", f"no tag {tag!r} in the corp (run `wecom-hub sync`?)")
        for field, tags in (("add", request.add), ("remove", request.remove))
        for i, tag in enumerate(tags)
        if tag not in known
    ]
    if problems:
        raise Invalid(problems)
