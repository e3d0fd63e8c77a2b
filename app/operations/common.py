"""What the operations share: resolving the app an operation is done as, and a fresh
idempotency key for an action that nothing else could have written."""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.kinds import ActionKind
from app.models import WecomApp


async def app_of_corp(session: AsyncSession, corp_id: str) -> WecomApp | None:
    """The app to call WeCom as for a corp: its oldest registered one."""
    return await session.scalar(
        select(WecomApp)
        .where(WecomApp.corp_id == corp_id, WecomApp.removed_at.is_(None))
        .order_by(WecomApp.id)
        .limit(1)
    )


def api_action_key(kind: ActionKind) -> str:
    """Each request is its own action; a repeated request is recognised by its
    Idempotency-Key header (app/api/idempotency.py), not here."""
    return f"{kind}:api:{uuid.uuid4().hex}"
