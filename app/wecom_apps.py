"""WeCom apps: registering them, with their secrets sealed, and finding their keys fast.

Functions take a session and never commit; the caller owns the transaction.
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, Field, SecretStr, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import IllegalAesKeyError, WXBizMsgCrypt, decode_aes_key
from app.crypto.at_rest import SecretBox
from app.models import WecomApp
from app.wecom.client import Credentials

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TOKEN = re.compile(r"[A-Za-z0-9]{1,32}")


class AppSpec(BaseModel):
    """What `wecom-hub apps add` takes; invalid values are refused before anything is stored."""

    slug: str
    corp_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    token: SecretStr
    aes_key: SecretStr
    secret: SecretStr
    agent_id: int | None = None
    label: str = ""

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.fullmatch(value):
            raise ValueError("slug: 1-64 of [a-z0-9_-], starting with a letter or digit")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("token: 1-32 letters and digits, as WeCom's console allows")
        return value

    @field_validator("aes_key")
    @classmethod
    def _aes_key(cls, value: SecretStr) -> SecretStr:
        try:
            decode_aes_key(value.get_secret_value())
        except IllegalAesKeyError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("secret must not be empty")
        return value


class AppExists(Exception):
    pass


def mask(secret: str) -> str:
    """Enough to tell two secrets apart, never enough to use one."""
    return f"{secret[:4]}…({len(secret)} chars)" if len(secret) > 8 else "…"


async def add_app(session: AsyncSession, box: SecretBox, spec: AppSpec) -> WecomApp:
    if await find_app(session, spec.slug) is not None:
        raise AppExists(f"an app with slug {spec.slug!r} exists")
    app = WecomApp(
        slug=spec.slug,
        corp_id=spec.corp_id,
        agent_id=spec.agent_id,
        label=spec.label,
        token_sealed=box.seal(spec.token.get_secret_value(), purpose="app.token"),
        aes_key_sealed=box.seal(spec.aes_key.get_secret_value(), purpose="app.aes_key"),
        secret_sealed=box.seal(spec.secret.get_secret_value(), purpose="app.secret"),
    )
    session.add(app)
    await session.flush()
    return app


async def find_app(session: AsyncSession, slug: str) -> WecomApp | None:
    query = select(WecomApp).where(WecomApp.slug == slug, WecomApp.removed_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


async def list_apps(session: AsyncSession) -> list[WecomApp]:
    query = select(WecomApp).where(WecomApp.removed_at.is_(None)).order_by(WecomApp.slug)
    return list((await session.execute(query)).scalars())


async def remove_app(session: AsyncSession, slug: str) -> bool:
    """Soft removal: callbacks to the slug stop verifying, its events stay queryable."""
    app = await find_app(session, slug)
    if app is None:
        return False
    app.removed_at = datetime.now(UTC)
    await session.flush()
    return True


async def load_credentials(session: AsyncSession, box: SecretBox, app_id: int) -> Credentials:
    """Whom to call the WeCom API as for this app (removed apps included: their pending
    actions still finish)."""
    app = await session.get(WecomApp, app_id)
    if app is None:
        raise LookupError(f"no app {app_id}")
    return Credentials(
        corp_id=app.corp_id, secret=box.open(app.secret_sealed, purpose="app.secret"), app_id=app.id
    )


@dataclass(frozen=True, slots=True)
class AppKeys:
    """What the callback path needs of an app, with its keys already opened."""

    id: int
    slug: str
    corp_id: str
    crypt: WXBizMsgCrypt


def open_keys(app: WecomApp, box: SecretBox) -> AppKeys:
    return AppKeys(
        id=app.id,
        slug=app.slug,
        corp_id=app.corp_id,
        crypt=WXBizMsgCrypt(
            token=box.open(app.token_sealed, purpose="app.token"),
            encoding_aes_key=box.open(app.aes_key_sealed, purpose="app.aes_key"),
            receive_id=app.corp_id,
        ),
    )


class AppDirectory:
    """Slug → AppKeys with a short in-memory cache, so a callback costs no lookup query and no
    AES-GCM work; a removed or changed app is seen after at most `ttl` seconds."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        box: SecretBox,
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._box = box
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, AppKeys]] = {}

    async def get(self, slug: str) -> AppKeys | None:
        cached = self._cache.get(slug)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._sessionmaker() as session:
            app = await find_app(session, slug)
        if app is None:
            self._cache.pop(slug, None)
            return None
        keys = open_keys(app, self._box)
        if self._ttl > 0:
            self._cache[slug] = (now + self._ttl, keys)
        return keys
