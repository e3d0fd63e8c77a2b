"""Deliver one webhook: the action handler for kind `webhook`.

Signed as Standard Webhooks v1 with every secret still in use; `webhook-id` is the
message's (the same on every retry), `webhook-timestamp` this attempt's. 2xx is success;
anything else fails this attempt: 3xx too (no redirect is followed), 410 disables the
subscription, 429 and 503 are retried no sooner than their Retry-After. The first KB of the
answer is kept with the attempt. A subscription whose deliveries all fail for
`disable_after` is disabled, with the reason."""

import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn
from urllib.parse import urlsplit

import aiohttp

from app.actions.errors import ActionError, Reply
from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome, Run
from app.config import Settings
from app.crypto.at_rest import SecretBox
from app.metrics import WEBHOOKS_DISABLED
from app.webhooks.guard import AddressPolicy, AddressRefused, connector
from app.webhooks.signing import sign

log = logging.getLogger(__name__)

REPLY_BYTES = 1024
SECRET_PURPOSE = "webhook.secret"  # noqa: S105 - what a sealed value is for, not a secret

_ENDPOINT = """
    SELECT url, enabled, disabled_reason, secret_sealed, previous_secret_sealed,
           coalesce(previous_secret_until > now(), false) AS previous_in_use
    FROM webhook_endpoints WHERE id = $1
"""
_HEALTHY = (
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
)
_FAILING = """
    UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())
    WHERE id = $1 RETURNING failing_since < now() - $2::interval AS too_long
"""
_DISABLE = """
    UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = now()
    WHERE id = $1 AND enabled RETURNING id
"""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    id: int
    url: str
    secrets: list[str]


class WebhookSender:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        box: SecretBox,
        policy: AddressPolicy,
        *,
        timeout: float,
        disable_after: timedelta,
    ) -> None:
        """http: its connector resolves through the address policy (guard.connector)."""
        self._http = http
        self._box = box
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._disable_after = disable_after

    async def deliver(self, run: Run) -> Outcome:
        endpoint_id = int(run.action.target)
        row = await run.db.fetchrow(_ENDPOINT, endpoint_id)
        if row is None:
            return Outcome(ActionStatus.SKIPPED, "the subscription was deleted")
        if not row["enabled"]:
            return Outcome(
                ActionStatus.SKIPPED, f"the subscription is disabled: {row['disabled_reason']}"
            )
        secrets = [self._box.open(row["secret_sealed"], purpose=SECRET_PURPOSE)]
        if row["previous_in_use"] and row["previous_secret_sealed"]:
            secrets.append(self._box.open(row["previous_secret_sealed"], purpose=SECRET_PURPOSE))
        endpoint = _Endpoint(endpoint_id, row["url"], secrets)
        try:
            reply, retry_after = await self._post(endpoint, run.action.payload)
        except ActionError:
            await self._failed(run, endpoint_id)
            raise
        if 200 <= (reply.http_status or 0) < 300:
            await run.db.execute(_HEALTHY, endpoint_id)
            return Outcome(ActionStatus.SUCCEEDED, f"answered {reply.http_status}", reply)
        await self._refused(run, endpoint_id, reply, retry_after)

    async def _post(
        self, endpoint: _Endpoint, payload: dict[str, object]
    ) -> tuple[Reply, timedelta | None]:
        message_id = str(payload["message_id"])
        body = json.dumps(payload["message"], ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "wecom-hub-webhooks/1",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                endpoint.secrets, msg_id=message_id, timestamp=timestamp, body=body
            ),
        }
        try:
            self._policy.check_literal(urlsplit(endpoint.url).hostname or "")
            async with self._http.post(
                endpoint.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                start = await response.content.read(REPLY_BYTES)
                reply = Reply(response.status, start.decode("utf-8", "replace"))
                retry_after = _retry_after(response.headers.get("retry-after"))
        except AddressRefused as exc:
            raise ActionError("address_refused", str(exc), retryable=False) from None
        except TimeoutError:
            raise ActionError(
                "timeout", f"no answer within {self._timeout.total:g} s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            # The error's own text may name the URL; the URL's path and query may hold a
            # token of the receiver's: say only what failed.
            raise ActionError("unreachable", type(exc).__name__, retryable=True) from None
        return reply, retry_after

    async def _refused(
        self, run: Run, endpoint_id: int, reply: Reply, retry_after: timedelta | None
    ) -> NoReturn:
        status = reply.http_status or 0
        if status == 410:
            await self._disable(run, endpoint_id, "the receiver answered 410 Gone")
            raise ActionError(
                "http.410", "410 Gone: the subscription is disabled", retryable=False, reply=reply
            )
        await self._failed(run, endpoint_id)
        wait = retry_after if status in (429, 503) else None
        raise ActionError(
            f"http.{status}",
            "a redirect is not followed" if 300 <= status < 400 else f"answered {status}",
            retryable=True,
            retry_after=wait,
            reply=reply,
        )

    async def _failed(self, run: Run, endpoint_id: int) -> None:
        too_long = await run.db.fetchval(_FAILING, endpoint_id, self._disable_after)
        if too_long:
            days = self._disable_after / timedelta(days=1)
            await self._disable(run, endpoint_id, f"every delivery failed for {days:g} days")

    async def _disable(self, run: Run, endpoint_id: int, reason: str) -> None:
        if await run.db.fetchval(_DISABLE, endpoint_id, reason) is not None:
            WEBHOOKS_DISABLED.labels("gone" if "410" in reason else "failing").inc()
            log.warning("webhook.disabled", extra={"endpoint_id": endpoint_id, "reason": reason})


def _retry_after(value: str | None) -> timedelta | None:
    """Retry-After as seconds or as an HTTP date; at most a day is honoured."""
    if not value:
        return None
    if value.strip().isdigit():
        return timedelta(seconds=min(int(value), 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), min(when - datetime.now(UTC), timedelta(days=1)))


@contextlib.asynccontextmanager
async def open_sender(settings: Settings, box: SecretBox) -> AsyncIterator[WebhookSender]:
    """A sender with its own HTTP client: connections resolved through the address policy,
    no cookies kept between receivers."""
    policy = AddressPolicy(allow=settings.webhook_allow_cidrs, deny=settings.webhook_deny_cidrs)
    async with aiohttp.ClientSession(
        connector=connector(policy, limit=settings.webhook_concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as http:
        yield WebhookSender(
            http,
            box,
            policy,
            timeout=settings.webhook_timeout_seconds,
            disable_after=timedelta(days=settings.webhook_disable_after_days),
        )
