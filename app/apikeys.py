"""API keys for the REST API: creating, listing and revoking them, and checking one fast.

A key is `whk_` and 40 base62 characters from `secrets` (238 bits): base62 so a double click
selects all of it, the prefix so a secret scanner or a person recognises it. Only its
SHA-256 is stored: with that much entropy a fast hash is as safe as a slow one, and the
lookup is one unique-index probe. `prefix` (`whk_` and the next 8 characters) is what
listings show, so a leaked key can be traced and revoked.

Functions take a session and never commit; the caller owns the transaction.
"""

import hashlib
import logging
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import CursorResult, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import ErrorCode, FieldError, Forbidden, Invalid, NotFound, Unauthorized
from app.models import ApiKey, IdempotentRequest

log = logging.getLogger(__name__)

KEY_PREFIX = "whk_"
_ALPHABET = string.digits + string.ascii_letters
_KEY_CHARS = 40
_KEY = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{_KEY_CHARS}}}")
_SHOWN_CHARS = 8
NAME_MAX = 100


class Scope(StrEnum):
    """What a key may do; each scope includes the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: "Scope") -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """A key as anyone may see it: never the key itself, nor its hash."""

    id: int
    name: str
    scope: Scope
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> "ApiKeyView":
        return cls(
            id=row.id,
            name=row.name,
            scope=Scope(row.scope),
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def _validated(name: str, scope: str) -> tuple[str, Scope]:
    errors = []
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        errors.append(FieldError("name", f"must be 1 to {NAME_MAX} characters"))
    if scope not in {known.value for known in Scope}:
        errors.append(FieldError("scope", f"must be one of {', '.join(Scope)}"))
    if errors:
        raise Invalid(errors)
    return name, Scope(scope)


async def create_key(session: AsyncSession, *, name: str, scope: str) -> tuple[ApiKeyView, str]:
    """The new key's view and the key itself, which is never available again."""
    name, checked_scope = _validated(name, scope)
    key = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_KEY_CHARS))
    row = ApiKey(
        name=name,
        scope=checked_scope.value,
        prefix=key[: len(KEY_PREFIX) + _SHOWN_CHARS],
        key_hash=hash_key(key),
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)  # created_at comes from the database
    return ApiKeyView.of(row), key


async def list_keys(session: AsyncSession) -> list[ApiKeyView]:
    """Every key, revoked ones included (they explain a client's 401s); newest first, as
    every list of the API."""
    rows = await session.scalars(select(ApiKey).order_by(ApiKey.id.desc()))
    return [ApiKeyView.of(row) for row in rows]


async def revoke_key(session: AsyncSession, key_id: int) -> ApiKeyView:
    """Revoking twice keeps the first time: that is when the key stopped working."""
    row = await session.get(ApiKey, key_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no API key with id {key_id}", code=ErrorCode.API_KEY_NOT_FOUND)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
    return ApiKeyView.of(row)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key that authenticated the request."""

    key_id: int
    name: str
    scope: Scope


def require(principal: Principal, needed: Scope) -> None:
    if not principal.scope.allows(needed):
        raise Forbidden(
            f"this needs an API key with scope {needed} or higher; this key has {principal.scope}",
            code=ErrorCode.INSUFFICIENT_SCOPE,
        )


@dataclass(frozen=True, slots=True)
class _Known:
    principal: Principal
    revoked: bool


class ApiKeyVerifier:
    """Checks `Authorization: Bearer whk_…` with a short in-memory cache by hash, of unknown
    keys too, so a request costs no query most of the time. Each replica has its own cache,
    and revocation only writes the database: a revoked key stops working everywhere after at
    most `ttl` seconds. At most `max_entries` are kept, so random keys cannot grow it.

    `last_used_at` is written at most once a minute per key and process: precise enough to
    tell a key in use from a forgotten one, without a write per request.
    """

    TOUCH_EVERY = 60.0

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # Insertion order is expiry order (one ttl for all), so the first entry goes first.
        self._cache: dict[bytes, tuple[float, _Known | None]] = {}
        self._touched: dict[int, float] = {}

    async def authenticate(self, authorization_header: str | None) -> Principal:
        if authorization_header is None:
            raise Unauthorized(
                "send an API key: Authorization: Bearer whk_…", code=ErrorCode.MISSING_API_KEY
            )
        scheme, _, key = authorization_header.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not _KEY.fullmatch(key):
            raise Unauthorized(
                "the Authorization header must be `Bearer whk_` and 40 letters and digits",
                code=ErrorCode.MALFORMED_API_KEY,
            )
        known = await self._lookup(hash_key(key))
        if known is None:
            raise Unauthorized("no such API key", code=ErrorCode.INVALID_API_KEY)
        if known.revoked:
            raise Unauthorized("this API key has been revoked", code=ErrorCode.REVOKED_API_KEY)
        await self._touch(known.principal.key_id)
        return known.principal

    async def _lookup(self, digest: bytes) -> _Known | None:
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._sessionmaker() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        known = None
        if row is not None:
            principal = Principal(key_id=row.id, name=row.name, scope=Scope(row.scope))
            known = _Known(principal, revoked=row.revoked_at is not None)
        self._remember(digest, known, now)
        return known

    def _remember(self, digest: bytes, known: _Known | None, now: float) -> None:
        self._cache.pop(digest, None)
        if self._ttl <= 0:
            return
        self._cache[digest] = (now + self._ttl, known)
        while len(self._cache) > self._max_entries:
            del self._cache[next(iter(self._cache))]

    async def _touch(self, key_id: int) -> None:
        """One short UPDATE when due. It skips a row another transaction has locked rather
        than wait for it, and a failure is logged, never the request's failure: the next
        request a minute later tries again."""
        now, last = self._clock(), self._touched.get(key_id)
        if last is not None and now - last < self.TOUCH_EVERY:
            return
        self._touched[key_id] = now
        try:
            async with self._sessionmaker.begin() as session:
                await session.execute(_TOUCH, {"id": key_id})
        except Exception:
            log.warning("could not record the use of API key %s", key_id, exc_info=True)


_TOUCH = text(
    "UPDATE api_keys SET last_used_at = now() WHERE id = "
    "(SELECT id FROM api_keys WHERE id = :id FOR NO KEY UPDATE SKIP LOCKED)"
)


# How long the answer to a write made with an Idempotency-Key is kept (Stripe keeps 24 h).
IDEMPOTENCY_EXPIRY = timedelta(hours=24)


async def prune_idempotent_requests(
    session: AsyncSession, older_than: timedelta = IDEMPOTENCY_EXPIRY
) -> int:
    """Forget the answers to idempotent writes older than `older_than`; how many there were."""
    result = await session.execute(
        delete(IdempotentRequest).where(IdempotentRequest.created_at < func.now() - older_than)
    )
    assert isinstance(result, CursorResult)  # what a DELETE gives; Session.execute says less
    return result.rowcount
