"""Assemble the client from settings: one httpx pool, the shared token cache, the limiter."""

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.wecom.client import WecomClient
from app.wecom.ratelimit import RateLimiter
from app.wecom.recording import CallRecorder
from app.wecom.tokens import TokenCache


def create_client(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    box: SecretBox,
    http: httpx.AsyncClient,
) -> WecomClient:
    client = WecomClient(
        http,
        limiter=RateLimiter(
            per_minute=settings.wecom_api_calls_per_minute,
            per_hour=settings.wecom_api_calls_per_hour,
            concurrency=settings.wecom_api_concurrency,
        ),
        record=CallRecorder(sessionmaker),
    )
    client.tokens = TokenCache(sessionmaker, box, client.fetch_token)
    return client


def create_http(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.wecom_api_base_url,
        timeout=httpx.Timeout(settings.wecom_api_timeout_seconds),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )
