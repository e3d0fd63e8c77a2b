"""`Idempotency-Key` on writes, as Stripe and draft-ietf-httpapi-idempotency-key-header do it:
a client that retries a POST after a timeout gets the first answer again instead of a second
resource.

Everything happens in the route's own transaction, so the record and the write it describes
commit together or not at all:

    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        created = await service.create(session, …)
        return await idem.remember(session, 201, Created.of(created))

`replay` inserts the (API key, Idempotency-Key) row first, with the method, path and SHA-256
of the raw body. A concurrent request with the same key blocks on that row until the first
commits, and then finds it: same method, path and body → the stored status and JSON body
again, with `Idempotent-Replayed: true`; anything else → 422 `idempotency_key_reused`. It
waits at most LOCK_TIMEOUT_MS, then gets 409 `idempotency_in_progress`. A request that fails
(an AppError) rolls the row back with everything else: nothing is remembered and a retry
runs again. The replayed body is the same JSON, though its object keys may come in another
order (JSONB keeps them sorted its own way).

Records expire: housekeeping deletes those older than 24 h (app/apikeys.py IDEMPOTENCY_EXPIRY,
Stripe's window), after which a
key may be used again.
"""

import hashlib
import re
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import get_principal
from app.apikeys import Principal
from app.errors import AppError, Conflict, ErrorCode, Invalid
from app.models import IdempotentRequest

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
LOCK_TIMEOUT_MS = 2000
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_LOCK_NOT_AVAILABLE = "55P03"


class Idempotency:
    """One request's idempotency: without an Idempotency-Key, `replay` finds nothing and
    `remember` only answers, so a route reads the same either way."""

    def __init__(
        self, *, api_key_id: int, key: str | None, method: str, path: str, body: bytes
    ) -> None:
        self._api_key_id = api_key_id
        self._key = key
        self._method = method
        self._path = path
        self._body_sha256 = hashlib.sha256(body).digest()

    async def replay(self, session: AsyncSession) -> JSONResponse | None:
        """The first answer if this key was used before, None if this request is the first."""
        if self._key is None:
            return None
        if await self._claim(session):
            return None
        first = await session.get(IdempotentRequest, (self._api_key_id, self._key))
        if first is None or first.status_code is None:  # pruned since; or a route that forgot
            raise _in_progress()
        asked = (self._method, self._path, self._body_sha256)
        if (first.method, first.path, first.body_sha256) != asked:
            raise Invalid(
                [],
                detail=f"this {HEADER} was used for another request; use a new one",
                code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
            )
        return JSONResponse(first.response, first.status_code, headers={REPLAYED: "true"})

    async def remember(self, session: AsyncSession, status: int, body: BaseModel) -> JSONResponse:
        """The answer, stored for repeats in the caller's transaction when there is a key."""
        content = body.model_dump(mode="json")
        if self._key is not None:
            await session.execute(
                update(IdempotentRequest)
                .where(
                    IdempotentRequest.api_key_id == self._api_key_id,
                    IdempotentRequest.key == self._key,
                )
                .values(status_code=status, response=content)
            )
        return JSONResponse(content, status)

    async def _claim(self, session: AsyncSession) -> bool:
        """True when this request inserted the row; waits while another transaction holds it,
        but only so long: a first request that runs long must not pile up its retries."""
        await session.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
        claim = (
            insert(IdempotentRequest)
            .values(
                api_key_id=self._api_key_id,
                key=self._key,
                method=self._method,
                path=self._path,
                body_sha256=self._body_sha256,
            )
            .on_conflict_do_nothing()
            .returning(IdempotentRequest.key)
        )
        try:
            inserted = (await session.execute(claim)).first() is not None
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise _in_progress() from None
            raise
        await session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
        return inserted


def _in_progress() -> Conflict:
    return Conflict(
        f"a request with this {HEADER} is still running; retry later",
        code=ErrorCode.IDEMPOTENCY_IN_PROGRESS,
    )


async def idempotency(
    request: Request,
    principal: Annotated[Principal, Depends(get_principal)],
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="1 to 255 printable ASCII characters, unique per request (a UUID "
            "will do), kept 24 hours. A repeat with the same body gets the first answer "
            f"again, with `{REPLAYED}: true`; another body under the same key is refused.",
        ),
    ] = None,
) -> Idempotency:
    if key is not None and not _KEY.fullmatch(key):
        raise AppError(
            f"{HEADER} must be 1 to 255 printable ASCII characters",
            code=ErrorCode.BAD_IDEMPOTENCY_KEY,
        )
    return Idempotency(
        api_key_id=principal.key_id,
        key=key,
        method=request.method,
        path=request.url.path,
        body=await request.body(),  # already read by FastAPI for the body model: cached
    )


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]
