"""The ASGI application: create_app() and the lifespan that owns every long-lived resource."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import Receive, Scope, Send

from app import api, runtime
from app.apikeys import ApiKeyVerifier
from app.automations.replies import ReplyBook
from app.callbacks.writer import EventWriter
from app.config import Settings, get_settings
from app.crypto.at_rest import SecretBox
from app.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.processing import workers
from app.routers import (
    admin_port,
    body_limit,
    callback,
    docs,
    health,
    problems,
    request_id,
    security_headers,
)
from app.routers.body_deadlines import BodyDeadlines
from app.wecom.client import WecomClient
from app.wecom.factory import open_client
from app.wecom_apps import AppDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hub:
    """Everything a request may use, created once per process in the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    apps: AppDirectory
    writer: EventWriter
    replies: ReplyBook
    api_keys: ApiKeyVerifier
    box: SecretBox  # seals the secrets of apps added or changed over the API
    # For the calls a request waits on (a channel's QR code, a broadcast's remind or
    # cancel); the rest go through actions, run by the action runner's own client.
    wecom: WecomClient
    body_deadlines: BodyDeadlines  # callback bodies that stall are cut off


class HubApp(FastAPI):
    """The REST API's FastAPI application, with WeCom's callbacks answered before its
    middleware stack and router (app/routers/callback.py says why; ADR 0013)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.callback = callback.CallbackEndpoint(lambda: self.state.hub)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (slug := callback.slug_of(scope)) is not None:
            await self.callback(scope, receive, send, slug)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    started: Callable[[], None] | None = None,
) -> FastAPI:
    """database_url overrides the settings (the CLI passes the one it has migrated);
    `started` runs once everything long-lived exists, before the first request (the CLI
    freezes those objects out of the garbage collector's reach)."""
    config = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = database_url
        if url is None:
            url = await asyncio.to_thread(runtime.database_url, config)
        box = runtime.secret_box(config)
        engine = create_engine(url, config)
        sessionmaker = create_sessionmaker(engine)
        dsn = asyncpg_dsn(url)
        writer = EventWriter(
            dsn,
            window=config.ingest_commit_window_ms / 1000,
            max_batch=config.ingest_batch_max,
            flushers=config.ingest_flushers,
            timeout=config.database_timeout_seconds,
            max_queued=config.ingest_queue_max,
        )
        await writer.start()
        background = contextlib.AsyncExitStack()
        wecom = await background.enter_async_context(open_client(config, sessionmaker, box))
        app.state.hub = Hub(
            settings=config,
            engine=engine,
            sessionmaker=sessionmaker,
            apps=AppDirectory(sessionmaker, box, ttl=config.app_cache_seconds),
            writer=writer,
            replies=ReplyBook(sessionmaker, ttl=config.app_cache_seconds),
            api_keys=ApiKeyVerifier(sessionmaker),
            box=box,
            wecom=wecom,
            body_deadlines=BodyDeadlines(config.callback_body_timeout_seconds),
        )
        try:
            async with background:
                if config.process_in_serve:
                    await background.enter_async_context(workers.running(config, url, box))
                if started is not None:
                    started()
                yield
        finally:  # background loops and the WeCom client stop first, then ingest, the pool
            await writer.stop()
            app.state.hub.replies.close()
            await engine.dispose()

    app = HubApp(title="wecom-hub", lifespan=lifespan, docs_url=None, redoc_url=None)
    # Innermost first: a refused body still gets the request id and security headers.
    body_limit.install(app, config.api_max_body_bytes)
    request_id.install(app)
    security_headers.install(app)
    admin_port.install(app, config.admin_port)
    problems.install(app)
    docs.install(app)
    app.include_router(health.router)
    app.include_router(api.router)
    return app
