"""Action handlers that call WeCom: whom they call as, and WeCom's errors in the actions'
vocabulary. Only these handlers resolve credentials; an action of another kind (a webhook
delivery) never opens an app's secret.

Credentials are cached per app for `ttl` seconds, so a secret changed with `apps update`
is used by every runner within that time, without a restart."""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.actions.errors import ActionError
from app.actions.runner import ClaimedAction, Handler, Outcome, Run
from app.crypto.at_rest import SecretBox
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom_apps import load_credentials


@dataclass(frozen=True, slots=True)
class WecomRun(Run):
    """A Run with whom to call WeCom as, and the client to call it with; app_id and
    corp_id are the action's, never None here."""

    app_id: int
    corp_id: str
    credentials: Credentials
    client: WecomClient


WecomHandler = Callable[[WecomRun], Awaitable[Outcome]]


def wecom_error(exc: WecomApiError) -> ActionError:
    """`wecom.<errcode>` with WeCom's errmsg; `wecom.unanswered` when WeCom gave no answer
    (timeout, HTTP 5xx): retryable exactly when the WeCom client says so."""
    code = "wecom.unanswered" if exc.errcode is None else f"wecom.{exc.errcode}"
    return ActionError(code, exc.errmsg, retryable=exc.retryable)


class CredentialCache:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        box: SecretBox,
        *,
        ttl: float = 10.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._box = box
        self._ttl = ttl
        self._cached: dict[int, tuple[float, Credentials]] = {}

    async def get(self, app_id: int) -> Credentials:
        hit = self._cached.get(app_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self._sessionmaker() as session:
            credentials = await load_credentials(session, self._box, app_id)
        self._cached[app_id] = (time.monotonic() + self._ttl, credentials)
        return credentials


class WecomHandlers:
    """Turns a handler that calls WeCom into a runner Handler."""

    def __init__(self, client: WecomClient, credentials: CredentialCache) -> None:
        self._client = client
        self._credentials = credentials

    def wrap(self, handler: WecomHandler) -> Handler:
        async def run(run: Run) -> Outcome:
            action: ClaimedAction = run.action
            if action.app_id is None:
                raise ActionError("no_app", "a WeCom action needs an app", retryable=False)
            try:
                credentials = await self._credentials.get(action.app_id)
            except LookupError:
                raise ActionError(
                    "unknown_app", f"no app {action.app_id}", retryable=False
                ) from None
            wecom_run = WecomRun(
                action,
                run.sessionmaker,
                run.db,
                action.app_id,
                credentials.corp_id,
                credentials,
                self._client,
            )
            try:
                return await handler(wecom_run)
            except WecomApiError as exc:
                raise wecom_error(exc) from exc

        return run
