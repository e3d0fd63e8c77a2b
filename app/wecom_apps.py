"""WeCom apps: registering and changing them, with their secrets sealed, and finding their
keys fast. The CLI and the HTTP API call the same functions here, which refuse with
`Invalid` (each problem at its field), `NotFound` (`unknown_app`) or `AppExists`.

Functions take a session and never commit; the caller owns the transaction.

An app's Token, EncodingAESKey and Secret are sealed bound to the app (its id and corp) as
the owner (`secret_owner`): a sealed value copied into another app's row does not open.
Only `seal_secret` and `open_secret` here seal and open them.
"""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.caching import Refreshing
from app.crypto import IllegalAesKeyError, WXBizMsgCrypt, decode_aes_key
from app.crypto.at_rest import SecretBox
from app.errors import (
    Conflict,
    ErrorCode,
    FieldError,
    Invalid,
    NotFound,
    field_errors,
    not_null,
)
from app.models import Rule, WecomApp
from app.wecom.client import Credentials

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

    _not_null = field_validator("label", "token", "aes_key", "secret")(not_null)


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


def mask(secret: str) -> str:
    """That a secret is set, and its length: no character of it (the last few of a short
    Token are a real share of it, and `apps show` output ends up in tickets and chats). To
    tell a rotated secret from the old one, compare the console's value with what you gave."""
    return f"…({len(secret)} chars)"


SecretField = Literal["token", "aes_key", "secret"]
SECRET_FIELDS: tuple[SecretField, ...] = ("token", "aes_key", "secret")


def secret_owner(app_id: int, corp_id: str) -> str:
    """Whose an app's sealed secrets are: the associated data that binds them to the row."""
    return f"apps/{app_id}/{corp_id}"


def seal_secret(box: SecretBox, app: WecomApp, field: SecretField, value: str) -> None:
    sealed = box.seal(value, purpose=f"app.{field}", owner=secret_owner(app.id, app.corp_id))
    setattr(app, f"{field}_sealed", sealed)


def open_secret(box: SecretBox, app: WecomApp, field: SecretField) -> str:
    """One of the app's secrets in clear; SecretBoxError if the row's sealed value is not
    this app's (copied from another row) or its key is not configured."""
    sealed: str = getattr(app, f"{field}_sealed")
    return box.open(sealed, purpose=f"app.{field}", owner=secret_owner(app.id, app.corp_id))


def _exists(slug: str) -> AppExists:
    return AppExists(f"an app with slug {slug!r} exists", extra={"slug": slug})


async def add_app(session: AsyncSession, box: SecretBox, spec: AppSpec) -> WecomApp:
    if await find_app(session, spec.slug) is not None:
        raise _exists(spec.slug)
    # The id first: the secrets are sealed bound to it.
    next_id = text("SELECT nextval(pg_get_serial_sequence('apps', 'id'))")
    app = WecomApp(
        id=(await session.execute(next_id)).scalar_one(),
        slug=spec.slug,
        corp_id=spec.corp_id,
        agent_id=spec.agent_id,
        label=spec.label,
    )
    for field in SECRET_FIELDS:
        seal_secret(box, app, field, getattr(spec, field).get_secret_value())
    session.add(app)
    try:
        await session.flush()
    except IntegrityError as exc:  # another transaction added the slug since the check
        if "uq_apps_slug_active" in str(exc.orig):
            raise _exists(spec.slug) from None
        raise
    await session.refresh(app)  # created_at: set by Postgres
    return app


async def find_app(session: AsyncSession, slug: str, *, lock: bool = False) -> WecomApp | None:
    """lock: hold the app (FOR KEY SHARE) until the transaction ends, so that it is not
    removed meanwhile (remove_app waits), e.g. while a rule for it is saved."""
    query = select(WecomApp).where(WecomApp.slug == slug, WecomApp.removed_at.is_(None))
    if lock:
        query = query.with_for_update(read=True, key_share=True)
    return (await session.execute(query)).scalar_one_or_none()


async def app_by_slug(
    session: AsyncSession, slug: str, *, field: str = "app", lock: bool = False
) -> WecomApp:
    """An app a request names in one of its fields: unknown is that field's error (422),
    not a missing resource (404, get_app), so a typo is never mistaken for "none"."""
    app = await find_app(session, slug, lock=lock)
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
    for field in SECRET_FIELDS:
        secret: SecretStr | None = getattr(patch, field)
        if secret is not None:
            seal_secret(box, app, field, secret.get_secret_value())
    await session.flush()
    return app_view(app)


async def remove_app(session: AsyncSession, slug: str, *, force: bool = False) -> list[int]:
    """Soft removal: callbacks to the slug stop verifying, its events stay queryable.

    A rule names its app by id, so it would never apply again, not even once the slug is
    given to a new app: while enabled rules are for the app, removal is refused (Conflict
    `app_in_use`, naming them) unless `force`, which disables them too (kept, to be pointed
    at another app with `rules update ID --app SLUG`). Returns the ids of the rules
    disabled."""
    query = (
        select(WecomApp)
        .where(WecomApp.slug == slug, WecomApp.removed_at.is_(None))
        .with_for_update()  # a rule being saved for it holds KEY SHARE: wait for it
    )
    app = (await session.execute(query)).scalar_one_or_none()
    if app is None:
        raise NotFound(f"no app {slug!r}", code=ErrorCode.UNKNOWN_APP)
    rules = (
        await session.execute(
            select(Rule.id, Rule.kind, Rule.name)
            .where(Rule.app_id == app.id, Rule.enabled)
            .order_by(Rule.id)
        )
    ).all()
    if rules and not force:
        named = ", ".join(f"{r.kind} rule {r.id} ({r.name})" for r in rules)
        raise Conflict(
            f"app {slug!r} has enabled rules: {named}; delete them, disable them, or point "
            "them at another app (`rules update ID --app SLUG`) first, or remove the app "
            "with --force (API: ?force=true), which disables them",
            code=ErrorCode.APP_IN_USE,
            extra={
                "slug": slug,
                "rules": [{"id": r.id, "kind": r.kind, "name": r.name} for r in rules],
            },
        )
    disabled = [r.id for r in rules]
    if disabled:
        await session.execute(update(Rule).where(Rule.id.in_(disabled)).values(enabled=False))
    app.removed_at = datetime.now(UTC)
    await session.flush()
    return disabled


async def load_credentials(session: AsyncSession, box: SecretBox, app_id: int) -> Credentials:
    """Whom to call the WeCom API as for this app (removed apps included: their pending
    actions still finish)."""
    app = await session.get(WecomApp, app_id)
    if app is None:
        raise LookupError(f"no app {app_id}")
    return Credentials(corp_id=app.corp_id, secret=open_secret(box, app, "secret"), app_id=app.id)


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
            token=open_secret(box, app, "token"),
            encoding_aes_key=open_secret(box, app, "aes_key"),
            receive_id=app.corp_id,
        ),
    )


class AppDirectory:
    """Slug → AppKeys with a short in-memory cache, so a callback costs no lookup query and no
    AES-GCM work; a removed or changed app is seen after at most `ttl` seconds
    (app/caching.py: one lookup at a time per app, made before the entry runs out while
    callbacks keep coming, never a burst of them).

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
        self._unknown_ttl = min(ttl, unknown_ttl)
        self._max_unknown = max_unknown
        self._clock = clock
        self._keys = Refreshing(self._look_up, ttl=ttl, clock=clock)
        self._unknown: dict[str, float] = {}  # slug → until when it is known not to exist

    async def get(self, slug: str) -> AppKeys | None:
        if not SLUG.fullmatch(slug):
            return None
        if slug not in self._keys and self._unknown.get(slug, 0.0) > self._clock():
            return None
        return await self._keys.get(slug)

    async def _look_up(self, slug: str) -> AppKeys | None:
        """One lookup, however many callbacks wait for it: what it found out about an
        unknown slug is noted here once, not by every caller on every callback."""
        async with self._sessionmaker() as session:
            app = await find_app(session, slug)
        if app is None:
            self._remember_unknown(slug, self._clock())
            return None
        self._unknown.pop(slug, None)
        return open_keys(app, self._box)

    def _remember_unknown(self, slug: str, now: float) -> None:
        if self._unknown_ttl <= 0:
            return
        self._unknown.pop(slug, None)  # re-inserted last: dicts keep insertion order
        while len(self._unknown) >= self._max_unknown:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[slug] = now + self._unknown_ttl
