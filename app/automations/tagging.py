"""Apply the tags that tag rules chose, with externalcontact/mark_tag (PROTOCOL.md §5.3):
one call per customer and event, however many rules fired."""

from datetime import UTC, datetime

from sqlalchemy import select, update

from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.models import Follow
from app.wecom.errors import WecomApiError


async def mark_tags(run: WecomRun) -> Outcome:
    payload = run.action.payload
    try:
        await run.client.call(
            run.credentials,
            "POST",
            "externalcontact/mark_tag",
            json={
                "userid": payload["userid"],
                "external_userid": run.action.target,
                "add_tag": payload["add_tag"],
                "remove_tag": payload["remove_tag"],
            },
            deadline=run.deadline_monotonic,
        )
    except WecomApiError as exc:
        if exc.errcode == 84061:
            return Outcome(
                ActionStatus.SKIPPED, "84061: the customer is no longer a friend of the member"
            )
        raise
    # mark_tag does not call back (no edit event): keep our copy of the follow's tags right.
    async with run.sessionmaker.begin() as session:
        key = (
            Follow.corp_id == run.corp_id,
            Follow.userid == payload["userid"],
            Follow.external_userid == run.action.target,
        )
        current = await session.scalar(select(Follow.tag_ids).where(*key)) or []
        tags = sorted((set(current) | set(payload["add_tag"])) - set(payload["remove_tag"]))
        await session.execute(
            update(Follow).where(*key).values(tag_ids=tags, tags_marked_at=datetime.now(UTC))
        )
    return Outcome(
        ActionStatus.SUCCEEDED, f"add {payload['add_tag']} remove {payload['remove_tag']}"
    )
