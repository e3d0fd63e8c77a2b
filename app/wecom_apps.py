"""WeCom apps: registering and changing them, with their secrets sealed, and finding their
keys fast. The CLI and the HTTP API call the same functions here, which refuse with
`Invalid` (each problem at its field), `NotFound` (`unknown_app`) or `AppExists`.

Functions take a session and never commit; the caller owns the transaction.
"""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import IllegalAesKeyError, WXBizMsgCrypt, decode_aes_key
from app.crypto.at_rest import SecretBox
from app.errors import Conflict, ErrorCode, FieldError, Invalid, NotFound, field_errors
from app.models import WecomApp
from app.wecom.client import Credentials

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TOKEN = re.compile(r"[A-Za-z0-9]{1,32}")


def _slug(value: str) -> str:
    if not SLUG.fullmatch(value):
        raise ValueError("1-64 of [a-z0-9_-], starting with a letter or digit")
    return value


def _token(value: SecretStr) -> SecretStr:
    if not TOKEN.fullmatch(value.get_secret_value()):
        raise ValueError("1-32 letters and digits, as WeCom's console allows")
    return value


def _aes_key(value: SecretStr) -> SecretStr:
    try:
        decode_aes_key(value.get_secret_value())
    except IllegalAesKeyError as exc:
        raise ValueError(str(exc)) from None
    return value


def _secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


Slug = Annotated[str, AfterValidator(_slug)]
CallbackToken = Annotated[SecretStr, AfterValidator(_token)]
AesKey = Annotated[SecretStr, AfterValidator(_aes_key)]
AppSecret = Annotated[SecretStr, AfterValidator(_secret)]
AgentId = Annotated[int | None, Field(description="AgentId; none for 客户联系.")]


class AppSpec(BaseModel):
    """A new app, with the values of WeCom's admin console; invalid values are refused
    before anything is stored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "slug": "shop",
                    "corp_id": "ww1234567890abcdef",
                    "token": "Your32CharToken",
                    "aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
                    "secret": "<the app's Secret>",
                    "agent_id": 1000002,
                    "label": "Shop assistant",
                }
            ]
        },
    )

    slug: Slug
    corp_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    token: CallbackToken
    aes_key: AesKey
    secret: AppSecret
    agent_id: AgentId = None
    label: str = ""


class AppPatch(BaseModel):
    """What may change of an app: its name for people, its AgentId (null: none), and its
    secrets: the callback Token and EncodingAESKey when they are rotated in the console, the
    Secret when it is reset. A field left out is kept."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"label": "Shop"}, {"secret": "<the new Secret>"}]},
    )

    label: str | None = None
    agent_id: AgentId = None
    token: CallbackToken | None = None
    aes_key: AesKey | None = None
    secret: AppSecret | None = None

    @field_validator("label", "token", "aes_key", "secret")
    @classmethod
    def _not_null(cls, value: _T) -> _T:
        if value is None:  # given as null: left out is how to keep it
            raise ValueError("cannot be null")
        return value


class AppView(BaseModel):
    """An app as it is shown; never a secret, not even masked."""

    model_config = ConfigDict(frozen=True)

    slug: str
    corp_id: str
    agent_id: int | None
    label: str
    callback_path: str
    created_at: datetime


class AppExists(Conflict):
    code = ErrorCode.APP_EXISTS


def _parsed(model: type[_M], data: Mapping[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(field_errors(exc)) from None


def app_spec(data: Mapping[str, Any]) -> AppSpec:
    """An AppSpec from JSON-like data, or Invalid naming each field."""
    return _parsed(AppSpec, data)


def app_patch(data: Mapping[str, Any]) -> AppPatch:
    """An AppPatch from JSON-like data, or Invalid naming each field."""
    return _parsed(AppPatch, data)


def app_view(app: WecomApp) -> AppView:
    return AppView(
        slug=app.slug,
        corp_id=app.corp_id,
        agent_id=app.agent_id,
        label=app.label,
        callback_path=f"/callback/{app.slug}",
        created_at=app.created_at,
    )


# Below this length the last two characters are a real share of the secret (a 32-character
# Token keeps 30 unknown; an 8-character one would keep 6).
MASK_SHOWS_TAIL_FROM = 16


def mask(secret: str) -> str:
    """Enough to tell a rotated secret from the old one, never a help to guessing it: the
    length, and the last two characters of a long secret only (12 of ~190 bits of a Secret;
    the first characters would say more, as some secrets share a prefix)."""
    if len(secret) < MASK_SHOWS_TAIL_FROM:
        return f"…({len(secret)} chars)"
    return f"…{secret[-2:]} ({len(secret)} chars)"


def _exists(slug: str) -> AppExists:
    return AppExists(f"an app with slug {slug!r} exists", extra={"slug": slug})


async def add_app(session: AsyncSession, box: SecretBox, spec: AppSpec) -> WecomApp:
    if await find_app(session, spec.slug) is not None:
        raise _exists(spec.slug)
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
    try:
        await session.flush()
    except IntegrityError as exc:  # another transaction added the slug since the check
        if "uq_apps_slug_active" in str(exc.orig):
            raise _exists(spec.slug) from None
        raise
    await session.refresh(app)  # created_at: set by Postgres
    return app


async def find_app(session: AsyncSession, slug: str) -> WecomApp | None:
    query = select(WecomApp).where(WecomApp.slug == slug, WecomApp.removed_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


async def app_by_slug(session: AsyncSession, slug: str, *, field: str = "app") -> WecomApp:
    """An app a request names in one of its fields: unknown is that field's error (422),
    not a missing resource (404, get_app), so a typo is never mistaken for "none"."""
    app = await find_app(session, slug)
    if app is None:
        raise Invalid([FieldError(field, f"no app {slug!r}")])
    return app


async def get_app(session: AsyncSession, slug: str) -> WecomApp:
    app = await find_app(session, slug)
    if app is None:
        raise NotFound(f"no app {slug!r}", code=ErrorCode.UNKNOWN_APP)
    return app


async def list_apps(session: AsyncSession) -> list[WecomApp]:
    query = select(WecomApp).where(WecomApp.removed_at.is_(None)).order_by(WecomApp.slug)
    return list((await session.execute(query)).scalars())


async def update_app(session: AsyncSession, box: SecretBox, slug: str, patch: AppPatch) -> AppView:
    """Rotated keys are in force for callbacks after at most `app_cache_seconds`, and a new
    Secret at the next access token: both caches expire by time, not on a change."""
    app = await get_app(session, slug)
    given = patch.model_fields_set
    if patch.label is not None:
        app.label = patch.label
    if "agent_id" in given:
        app.agent_id = patch.agent_id
    for field, secret in (
        ("token", patch.token),
        ("aes_key", patch.aes_key),
        ("secret", patch.secret),
    ):
        if secret is not None:
            sealed = box.seal(secret.get_secret_value(), purpose=f"app.{field}")
            setattr(app, f"{field}_sealed", sealed)
    await session.flush()
    return app_view(app)


async def remove_app(session: AsyncSession, slug: str) -> None:
    """Soft removal: callbacks to the slug stop verifying, its events stay queryable."""
    app = await get_app(session, slug)
    app.removed_at = datetime.now(UTC)
    await session.flush()


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
    AES-GCM work; a removed or changed app is seen after at most `ttl` seconds.

    Unknown slugs are anyone's to send, so they must not cost a query each: a slug that
    cannot be one is refused without a lookup, and one that was looked up and not found is
    remembered for a moment (at most `max_unknown` of them, the oldest forgotten first). A
    new app is therefore found at most `min(ttl, unknown_ttl)` after it is added."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        box: SecretBox,
        *,
        ttl: float,
        unknown_ttl: float = 2.0,
        max_unknown: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._box = box
        self._ttl = ttl
        self._unknown_ttl = min(ttl, unknown_ttl)
        self._max_unknown = max_unknown
        self._clock = clock
        self._cache: dict[str, tuple[float, AppKeys]] = {}
        self._unknown: dict[str, float] = {}  # slug → until when it is known not to exist

    async def get(self, slug: str) -> AppKeys | None:
        if not SLUG.fullmatch(slug):
            return None
        now = self._clock()
        cached = self._cache.get(slug)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._unknown.get(slug, 0.0) > now:
            return None
        async with self._sessionmaker() as session:
            app = await find_app(session, slug)
        if app is None:
            self._cache.pop(slug, None)
            self._remember_unknown(slug, now)
            return None
        self._unknown.pop(slug, None)
        keys = open_keys(app, self._box)
        if self._ttl > 0:
            self._cache[slug] = (now + self._ttl, keys)
        return keys

    def _remember_unknown(self, slug: str, now: float) -> None:
        if self._unknown_ttl <= 0:
            return
        self._unknown.pop(slug, None)  # re-inserted last: dicts keep insertion order
        while len(self._unknown) >= self._max_unknown:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[slug] = now + self._unknown_ttl
