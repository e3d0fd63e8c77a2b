"""access_token per (corp, secret), shared by every process through Postgres.

WeCom invalidates the previous token when a new one is fetched too eagerly, and limits
gettoken; replicas that each fetch their own would fight. So a token is fetched once for
everyone: in-process callers queue on an asyncio lock, processes on a Postgres advisory lock,
and whoever gets the lock first re-reads the shared row before fetching (WxJava #1222,
#1991: a lock without the re-check is not enough).
"""

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto.at_rest import SecretBox
from app.models import AccessToken

# Refresh this long before WeCom's expiry, so no call goes out with a token about to die.
EARLY_REFRESH = timedelta(minutes=5)

Fetch = Callable[[str, str], Awaitable[tuple[str, int]]]  # (corp_id, secret) → (token, expires_in)


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str
    expires_at: datetime


class TokenCache:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], box: SecretBox, fetch: Fetch
    ) -> None:
        self._sessionmaker = sessionmaker
        self._box = box
        self._fetch = fetch
        self._memory: dict[tuple[str, str], _Cached] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def token(self, corp_id: str, secret: str, *, replacing: str | None = None) -> str:
        """A valid token. With `replacing`, WeCom refused that token: never return it again."""
        key = (corp_id, hashlib.sha256(secret.encode()).hexdigest())
        cached = self._memory.get(key)
        if cached is not None and self._usable(cached, replacing):
            return cached.token
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._memory.get(key)
            if cached is None or not self._usable(cached, replacing):
                cached = await self._shared(key, secret, replacing)
                self._memory[key] = cached
            return cached.token

    @staticmethod
    def _usable(cached: _Cached, replacing: str | None) -> bool:
        return cached.token != replacing and cached.expires_at - EARLY_REFRESH > datetime.now(UTC)

    async def _shared(self, key: tuple[str, str], secret: str, replacing: str | None) -> _Cached:
        corp_id, secret_hash = key
        async with self._sessionmaker.begin() as session:
            await session.execute(
                select(func.pg_advisory_xact_lock(func.hashtext(f"token:{corp_id}:{secret_hash}")))
            )
            row = await session.get(AccessToken, key)
            if row is not None:
                stored = _Cached(self._box.open(row.token_sealed, purpose="token"), row.expires_at)
                if self._usable(stored, replacing):
                    return stored
            started = time.time()
            token, expires_in = await self._fetch(corp_id, secret)
            expires_at = datetime.fromtimestamp(started + expires_in, tz=UTC)
            values = {
                "token_sealed": self._box.seal(token, purpose="token"),
                "expires_at": expires_at,
                "fetched_at": func.now(),
            }
            statement = insert(AccessToken).values(
                corp_id=corp_id, secret_hash=secret_hash, **values
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["corp_id", "secret_hash"], set_=values
                )
            )
            return _Cached(token, expires_at)
