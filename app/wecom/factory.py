"""Assemble the client from settings: one aiohttp session, the shared token cache, the limiter."""

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.wecom.client import WecomClient
from app.wecom.ratelimit import RateLimiter
from app.wecom.recording import CallRecorder
from app.wecom.tokens import TokenCache


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox
) -> AsyncIterator[WecomClient]:
    """The client with its own HTTP session; on exit the call records still in the air are
    written (before the caller disposes of its engine) and the session is closed."""
    async with create_http(settings) as http:
        client = create_client(settings, sessionmaker, box, http)
        try:
            yield client
        finally:
            await client.drain_records()


def create_client(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    box: SecretBox,
    http: aiohttp.ClientSession,
) -> WecomClient:
    client = WecomClient(
        http,
        limiter=RateLimiter(
            per_minute=settings.wecom_api_calls_per_minute,
            per_hour=settings.wecom_api_calls_per_hour,
            concurrency=settings.wecom_api_concurrency,
        ),
        record=CallRecorder(sessionmaker),
        max_answer_bytes=settings.wecom_api_max_answer_bytes,
    )
    client.tokens = TokenCache(sessionmaker, box, client.fetch_token)
    return client


def create_http(settings: Settings) -> aiohttp.ClientSession:
    """Open it inside a running event loop (`async with create_http(settings) as http`)."""
    return aiohttp.ClientSession(
        base_url=settings.wecom_api_base_url,
        timeout=aiohttp.ClientTimeout(total=settings.wecom_api_timeout_seconds),
        connector=aiohttp.TCPConnector(limit=100),
        raise_for_status=False,
    )
