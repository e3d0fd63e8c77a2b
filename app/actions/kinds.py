"""What an action can be, what state it can be in, and how each kind is retried.

One owner for these names: triggers, projection, kf, media, the runner, the API's filters
and the docs all use ActionKind; a new kind is added here first."""

import random
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum


class ActionKind(StrEnum):
    WELCOME = "welcome"  # externalcontact/send_welcome_msg, 20 s after the event at most
    MARK_TAG = "mark_tag"  # externalcontact/mark_tag
    ENRICH_CONTACT = "enrich_contact"  # externalcontact/get
    ENRICH_GROUP = "enrich_group"  # externalcontact/groupchat/get
    SYNC_TAGS = "sync_tags"  # externalcontact/get_corp_tag_list
    UPLOAD_MEDIA = "upload_media"  # media/upload, for welcome attachments
    KF_SYNC = "kf_sync"  # kf/sync_msg
    KF_REPLY = "kf_reply"  # kf/send_msg
    KF_WELCOME = "kf_welcome"  # kf/send_msg_on_event
    APP_MESSAGE = "app_message"  # message/send, asked for over the API
    CHURN_ALERT = "churn_alert"  # message/send to the member a customer deleted (流失提醒)
    WEBHOOK = "webhook"  # a signed POST to a subscribed internal system
    BROADCAST_TASK = "broadcast_task"  # externalcontact/add_msg_template, one per member
    BROADCAST_RESULTS = "broadcast_results"  # get_groupmsg_task/_send_result, until settled


class ActionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"  # shown, never stored: see status_sql
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


def status_sql(alias: str) -> str:
    """An action's status as the API, stats and people see it, in SQL over the actions row
    `alias`. `running` is not stored: a claim leaves the action `pending` and takes a lease
    (locked_by, locked_until), so that it changes no indexed column and Postgres can update
    the row in place (a HOT update) instead of adding an entry to each of the table's
    indexes (ADR 0008, fifth round). An action a runner holds is running until an outcome
    or a give-back clears locked_by, as a stored `running` was: also when its runner died
    and the lease ran out, until another runner takes it over (its call may have reached
    WeCom, so it cannot be cancelled meanwhile)."""
    return (
        f"CASE WHEN {alias}.status = 'pending' AND {alias}.locked_by IS NOT NULL"
        f" THEN 'running' ELSE {alias}.status END"
    )


def status_filter_sql(alias: str, param: str) -> str:
    """`status_sql(alias) = :param`, written so that ix_actions_status_id still finds the
    rows: the stored status first (running ones are stored as pending), then the shown
    one."""
    stored = f"CASE WHEN CAST(:{param} AS text) = 'running' THEN 'pending' ELSE :{param} END"
    return f"{alias}.status = {stored} AND {status_sql(alias)} = :{param}"


FINISHED = frozenset(
    {
        ActionStatus.SUCCEEDED,
        ActionStatus.FAILED,
        ActionStatus.EXPIRED,
        ActionStatus.SKIPPED,
        ActionStatus.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how soon, a retryable failure is tried again: exponential from
    `first_seconds`, capped at `cap_seconds`, with jitter (half to all of the delay) so
    that a burst of failures does not come back as a burst. An action's deadline, where
    it has one, stops retries before max_attempts does."""

    max_attempts: int
    first_seconds: float
    cap_seconds: float
    # Or a fixed schedule: when each retry comes, in seconds after the first attempt.
    schedule: tuple[float, ...] = ()

    def delay(self, attempts: int) -> timedelta:
        """How long after attempt number `attempts` (1: the first) the next one comes."""
        if self.schedule:
            since_first = self.schedule[min(attempts, len(self.schedule)) - 1]
            before = self.schedule[attempts - 2] if 1 < attempts <= len(self.schedule) else 0.0
            return timedelta(seconds=(since_first - before) * random.uniform(0.9, 1.1))
        base = min(self.first_seconds * 2.0 ** (attempts - 1), self.cap_seconds)
        return timedelta(seconds=base * random.uniform(0.5, 1.0))

    def scaled(self, factor: float) -> "RetryPolicy":
        """The same policy, every wait multiplied by `factor` (a test's shorter day)."""
        return replace(
            self,
            first_seconds=self.first_seconds * factor,
            cap_seconds=self.cap_seconds * factor,
            schedule=tuple(t * factor for t in self.schedule),
        )


# WeCom calls are retried within minutes: -1 and 45009 pass in seconds, and an answer
# that comes an hour late is worth little to a customer.
WECOM_CALL = RetryPolicy(max_attempts=6, first_seconds=2.0, cap_seconds=300.0)
POLICIES: dict[ActionKind, RetryPolicy] = {kind: WECOM_CALL for kind in ActionKind}
# The welcome's own client-side retries (30 ms apart) do most of the work; the runner's
# retry is the fallback, and the 20 s deadline ends it.
POLICIES[ActionKind.WELCOME] = RetryPolicy(max_attempts=8, first_seconds=0.5, cap_seconds=4.0)
# Standard Webhooks' example schedule: a receiver may be down for a day and miss nothing.
_WEBHOOK_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
POLICIES[ActionKind.WEBHOOK] = RetryPolicy(
    max_attempts=len(_WEBHOOK_SCHEDULE) + 1,
    first_seconds=5,
    cap_seconds=86400,
    schedule=tuple(float(t) for t in _WEBHOOK_SCHEDULE),
)
# A broadcast task's retry first looks for the task the last attempt may have made, which
# WeCom shows only once it has distributed it (41063 until then: seconds, at times
# minutes): retried soon, and for long enough to outlast that.
POLICIES[ActionKind.BROADCAST_TASK] = RetryPolicy(
    max_attempts=10, first_seconds=1.0, cap_seconds=300.0
)
