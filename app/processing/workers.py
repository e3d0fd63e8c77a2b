"""The background loops of a process: the event processor and the action runner.
`serve` runs them beside HTTP by default; `wecom-hub worker` runs only them."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import housekeeping
from app.actions.kinds import POLICIES, ActionKind
from app.actions.runner import ActionRunner, Handler
from app.actions.wecom import CredentialCache, WecomHandler, WecomHandlers
from app.automations import churn, kf, uploads
from app.automations.tagging import mark_tags
from app.automations.welcome import send_welcome
from app.broadcasts.actions import HANDLERS as BROADCAST_HANDLERS
from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.db import asyncpg_dsn, create_engine, create_pool, create_sessionmaker
from app.notify import Listener
from app.operations.app_messages import deliver_app_message
from app.processing import enrichment
from app.processing.processor import EventProcessor
from app.webhooks.delivery import WebhookSender, open_sender
from app.webhooks.publish import Announcer, Subscriptions
from app.wecom.client import WecomClient
from app.wecom.factory import open_client

# Actions in flight per process. Most of an action's time is WeCom's answer (tens of ms):
# at 16, 200 new customers a second (a welcome and an enrichment each) waited for slots
# (ADR 0008). Connections are not per action: the pools below are shared by short statements.
RUNNER_CONCURRENCY = 64
RUNNER_CONNECTIONS = 12
LOOPS = frozenset({"events", "actions"})


def event_processor(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    listener: Listener | None,
) -> EventProcessor:
    return EventProcessor(
        sessionmaker,
        listener=listener,
        batch_size=settings.processor_batch_size,
        lease_seconds=settings.processor_lease_seconds,
        max_attempts=settings.processor_max_attempts,
        poll_seconds=settings.processor_poll_seconds,
        claim_interval=settings.claim_interval_ms / 1000,
        webhooks=Subscriptions(ttl=settings.webhook_cache_seconds),
    )


WECOM_HANDLERS: dict[ActionKind, WecomHandler] = {
    ActionKind.WELCOME: send_welcome,
    ActionKind.KF_SYNC: kf.kf_sync,
    ActionKind.KF_REPLY: kf.kf_reply,
    ActionKind.KF_WELCOME: kf.kf_welcome,
    ActionKind.MARK_TAG: mark_tags,
    ActionKind.ENRICH_GROUP: enrichment.enrich_group,
    ActionKind.SYNC_TAGS: enrichment.sync_tags,
    ActionKind.UPLOAD_MEDIA: uploads.upload_media,
    ActionKind.APP_MESSAGE: deliver_app_message,
    ActionKind.CHURN_ALERT: churn.send_churn_alert,
    **BROADCAST_HANDLERS,
}


def handlers(
    settings: Settings,
    db: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    box: SecretBox,
    client: WecomClient,
) -> dict[ActionKind, Handler]:
    """Every kind's handler; those that call WeCom get their app's credentials (cached for
    app_cache_seconds, so a rotated secret is in use within that time). The enrichments of
    the process store what they learn together (enrichment.ContactWrites)."""
    wecom = WecomHandlers(
        client, CredentialCache(sessionmaker, box, ttl=settings.app_cache_seconds)
    )
    table: dict[ActionKind, WecomHandler] = {
        **WECOM_HANDLERS,
        ActionKind.ENRICH_CONTACT: enrichment.contact_enricher(enrichment.ContactWrites(db)),
    }
    return {kind: wecom.wrap(handler) for kind, handler in table.items()}


def action_runner(
    settings: Settings,
    db: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    listener: Listener | None,
    box: SecretBox,
    client: WecomClient,
) -> ActionRunner:
    return ActionRunner(
        db,
        sessionmaker,
        handlers(settings, db, sessionmaker, box, client),
        finished=Announcer(sessionmaker, Subscriptions(ttl=settings.webhook_cache_seconds)),
        listener=listener,
        concurrency=RUNNER_CONCURRENCY,
        lease_seconds=settings.processor_lease_seconds,
        poll_seconds=settings.processor_poll_seconds,
        claim_interval=settings.claim_interval_ms / 1000,
    )


def webhook_runner(
    settings: Settings,
    db: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    listener: Listener | None,
    sender: WebhookSender,
) -> ActionRunner:
    """Deliveries have a runner of their own, with its own slots: a receiver that takes its
    15 seconds never holds up a welcome with 20 seconds to live."""
    webhook = POLICIES[ActionKind.WEBHOOK].scaled(settings.webhook_retry_scale)
    return ActionRunner(
        db,
        sessionmaker,
        {ActionKind.WEBHOOK: sender.deliver},
        kinds=frozenset({ActionKind.WEBHOOK}),
        policies={**POLICIES, ActionKind.WEBHOOK: webhook},
        listener=listener,
        concurrency=settings.webhook_concurrency,
        lease_seconds=settings.processor_lease_seconds,
        poll_seconds=settings.processor_poll_seconds,
        claim_interval=settings.claim_interval_ms / 1000,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, url: str, box: SecretBox, *, loops: frozenset[str] = LOOPS
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start the loops ("events": the processor, "actions": the runner); cancel them, and
    wait for them, on exit.

    Each loop has its own connection pool: the actions in flight must never make the
    processor (or an HTTP request) wait for a connection."""
    dsn = asyncpg_dsn(url)
    processor_engine = create_engine(url, settings, pool_size=2, pre_ping=False)
    runner_engine = create_engine(url, settings, pool_size=RUNNER_CONNECTIONS, pre_ping=False)
    runner_sessions = create_sessionmaker(runner_engine)
    runner_db = create_pool(dsn, settings, max_size=RUNNER_CONNECTIONS)
    webhook_db = create_pool(dsn, settings, max_size=4)
    try:
        async with (
            runner_db,
            webhook_db,
            open_client(settings, runner_sessions, box) as client,
            open_sender(settings, box) as sender,
        ):
            stop = asyncio.Event()
            coroutines = []
            listener = Listener(dsn, retry_seconds=settings.processor_poll_seconds)
            if "events" in loops:
                processing = create_sessionmaker(processor_engine)
                processor = event_processor(settings, processing, listener)
                coroutines.append(processor.run(stop))
            if "actions" in loops:
                runner = action_runner(settings, runner_db, runner_sessions, listener, box, client)
                coroutines.append(runner.run(stop))
                deliveries = webhook_runner(settings, webhook_db, runner_sessions, listener, sender)
                coroutines.append(deliveries.run(stop))
                coroutines.append(
                    housekeeping.run(
                        runner_db,
                        runner_sessions,
                        stop,
                        retention_days=settings.event_retention_days,
                    )
                )
            async with listener.running():  # one LISTEN connection for all the loops
                tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
                try:
                    yield tasks
                finally:
                    # Let the work in hand finish (bounded): no connection cut mid-query.
                    stop.set()
                    _, unfinished = await asyncio.wait(tasks, timeout=settings.shutdown_seconds)
                    for task in unfinished:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await processor_engine.dispose()
        await runner_engine.dispose()
