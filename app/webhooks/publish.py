"""An event becomes one delivery action per subscription that wants its type, written in the
caller's transaction: the processor's for WeCom events (so a WeCom event retried three
times is still one message), the runner's for outcomes of actions. Which types anyone
subscribes to is cached for a few seconds, so the common case, nobody, costs no query."""

import json
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.actions.errors import ActionError
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import ClaimedAction
from app.events.context import Context
from app.events.models import WecomEvent
from app.notify import ACTIONS_CHANNEL
from app.webhooks.events import (
    Message,
    WebhookEventType,
    messages_of,
    outcome_message,
    with_channel,
)

_SUBSCRIBED = text(
    "SELECT DISTINCT unnest(CASE WHEN cardinality(event_types) = 0 THEN ARRAY['*']"
    " ELSE event_types END) FROM webhook_endpoints WHERE enabled"
)

# One delivery per enabled subscription of the type (or of every type), each its own action
# (target: the subscription's id) with the message inside; a repeat writes nothing.
_FAN_OUT = text(
    f"""
    WITH inserted AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, event_id, payload)
        SELECT '{ActionKind.WEBHOOK}', :app_id, :corp_id, w.id::text,
               'webhook:' || w.id || ':' || :msg_id, :event_id,
               jsonb_build_object('message_id', CAST(:msg_id AS text),
                                  'message', CAST(:body AS jsonb))
        FROM webhook_endpoints w
        WHERE w.enabled AND CASE
            WHEN CAST(:endpoint_id AS bigint) IS NOT NULL THEN w.id = :endpoint_id  -- a test
            ELSE cardinality(w.event_types) = 0 OR CAST(:type AS text) = ANY(w.event_types)
        END
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    )
    SELECT count(*), pg_notify(:channel, '') FROM inserted
    """  # noqa: S608 - the only interpolation is a constant
)


_CHANNEL_OF_STATE = text("SELECT id FROM channels WHERE corp_id = :corp_id AND state = :state")


class ChannelIds:
    """The channel a state belongs to, per corp, for `ttl` seconds (a miss too): a
    `customer.added` names its channel without a query per customer. At most MAX entries;
    beyond that the cache starts over."""

    MAX = 10_000

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._cached: dict[tuple[str, str], tuple[float, int | None]] = {}

    async def of(self, session: AsyncSession, corp_id: str, state: str) -> int | None:
        key = (corp_id, state)
        hit = self._cached.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        found: int | None = await session.scalar(
            _CHANNEL_OF_STATE, {"corp_id": corp_id, "state": state}
        )
        if len(self._cached) >= self.MAX:
            self._cached.clear()
        self._cached[key] = (time.monotonic() + self._ttl, found)
        return found


class Subscriptions:
    """Which event types any enabled subscription wants, for `ttl` seconds: a new
    subscription receives events within that time. Also the channels of states, cached as
    long (`channels`)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._until = 0.0
        self._types: frozenset[str] = frozenset()
        self.channels = ChannelIds(ttl)

    def known(self, type_: WebhookEventType) -> bool | None:
        """The answer while it is fresh, without a session; None when it must be asked."""
        if time.monotonic() >= self._until:
            return None
        return "*" in self._types or type_ in self._types

    async def wanted(self, session: AsyncSession, type_: WebhookEventType) -> bool:
        if time.monotonic() >= self._until:
            rows = await session.execute(_SUBSCRIBED)
            self._types = frozenset(row[0] for row in rows)
            self._until = time.monotonic() + self._ttl
        return "*" in self._types or type_ in self._types


async def publish(
    session: AsyncSession,
    message: Message,
    *,
    app_id: int | None,
    corp_id: str | None,
    event_id: int | None = None,
    endpoint_id: int | None = None,
) -> int:
    """Write the message's deliveries; how many were written. With endpoint_id: to that
    subscription only, whatever types it subscribes to (a test message)."""
    connection = await session.connection()
    row = (
        await connection.execute(
            _FAN_OUT,
            {
                "app_id": app_id,
                "corp_id": corp_id,
                "msg_id": message.id,
                "event_id": event_id,
                "body": json.dumps(message.body(), ensure_ascii=False),
                "type": message.type.value,
                "endpoint_id": endpoint_id,
                "channel": ACTIONS_CHANNEL,
            },
        )
    ).first()
    return int(row[0]) if row else 0


class Announcer:
    """The action runner's `finished` hook: an outcome that is news (a welcome sent, an
    action failed) becomes a webhook, unless nobody subscribes to its type."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], subscriptions: Subscriptions
    ) -> None:
        self._sessionmaker = sessionmaker
        self._subscriptions = subscriptions

    async def __call__(
        self,
        action: ClaimedAction,
        status: ActionStatus,
        reason: str | None,
        error: ActionError | None,
    ) -> None:
        message = outcome_message(action, status, reason, error)
        # Most outcomes are news nobody subscribes to: known() spares them a session.
        if message is None or self._subscriptions.known(message.type) is False:
            return
        async with self._sessionmaker.begin() as session:  # no connection unless it queries
            if await self._subscriptions.wanted(session, message.type):
                await publish(
                    session,
                    message,
                    app_id=action.app_id,
                    corp_id=action.corp_id,
                    event_id=action.event_id,
                )


async def publish_event(
    session: AsyncSession, event: WecomEvent, context: Context, subscriptions: Subscriptions
) -> None:
    """In the processor's transaction: the webhooks a stored WeCom event makes."""
    for message in messages_of(event, context):
        if await subscriptions.wanted(session, message.type):
            if message.type == WebhookEventType.CUSTOMER_ADDED:
                state = message.data.get("state")
                channel_id = (
                    await subscriptions.channels.of(session, context.corp_id, state)
                    if state
                    else None
                )
                message = with_channel(message, channel_id)
            await publish(
                session,
                message,
                app_id=context.app_id,
                corp_id=context.corp_id,
                event_id=context.event_id,
            )
