"""Statistics over a time range, for one corp or all: customers added and lost (per day,
channel state or member), welcome messages (per day), customer group joins and quits (per day
or group).

Customers and groups are read from the hourly counters the processor keeps
(app/models/stats.py), so a range is whole UTC hours (welcomes too, so that one range means
the same in all three), and grouped by day only in a zone whose days start on a whole UTC
hour; welcomes are read from the actions themselves. Days are local days in the zone asked
for, computed here with zoneinfo and handed to Postgres as the instants they start at, so
Postgres's own time zone names and rules play no part.
"""

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.triggers import WELCOME_CODE_SECONDS
from app.errors import FieldError, Invalid

DEFAULT_TZ = "Asia/Shanghai"
DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=366)
# Instants a range may name: WeCom's CreateTime is Unix time, and a bound keeps the local
# dates of a range's ends within what Python's datetime can hold.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
TOP_REASONS = 10
HOUR = timedelta(hours=1)

CustomerKey = Literal["day", "state", "userid"]
GroupKey = Literal["day", "chat_id"]
Outcome = Literal["sent", "skipped", "expired", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("sent", "skipped", "expired", "failed")
_OUTCOME_OF_STATUS: dict[str, Outcome] = {
    "succeeded": "sent",
    "skipped": "skipped",
    "expired": "expired",
    "failed": "failed",
}


@functools.cache
def _zone_names() -> frozenset[str]:
    # "localtime", where the system's zoneinfo has it, is whatever this server is set to.
    return frozenset(available_timezones() - {"localtime"})


def time_zone(name: str) -> ZoneInfo:
    """An IANA zone by its exact name. Only the names tzdata lists: ZoneInfo itself would
    open any file under its search path (a directory, a name too long: an OSError)."""
    if name not in _zone_names():
        raise Invalid([FieldError("tz", f"unknown time zone {name!r}; e.g. {DEFAULT_TZ}")])
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class StatsWindow:
    """[since, until), both whole UTC hours; the zone days are counted in; the corp (None:
    every corp)."""

    since: datetime
    until: datetime
    tz: ZoneInfo
    corp_id: str | None = None

    def days(self) -> list[tuple[date, datetime]]:
        """Each local day the window touches, with the instant it starts at within the
        window (the first one at `since`)."""
        first = self.since.astimezone(self.tz).date()
        last = (self.until - timedelta(microseconds=1)).astimezone(self.tz).date()
        days = [(first, self.since)]
        for offset in range(1, (last - first).days + 1):
            day = first + timedelta(days=offset)
            # A midnight skipped by a DST jump is read as the jump's instant (fold=0), which
            # is where that day starts.
            days.append((day, datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)))
        return days

    def hourly_days(self) -> list[tuple[date, datetime]]:
        """The days, for counters kept per hour: each must start on a whole UTC hour, or an
        hour would fall in two days."""
        days = self.days()
        for day, start in days:
            if start.minute or start.second:
                raise Invalid(
                    [
                        FieldError(
                            "tz",
                            f"{self.tz.key}: {day} starts at {start:%H:%M} UTC; these counts "
                            "are kept per UTC hour, so only zones whose days start on the "
                            "hour can group them by day",
                        )
                    ]
                )
        return days


def _on_the_hour(name: str, value: datetime) -> list[FieldError]:
    """`value` is aware (the API's Instant): 05:30+05:30 is 00:00 UTC, on the hour."""
    if not EARLIEST <= value < LATEST:
        return [FieldError(name, f"must be from {EARLIEST.year} to {LATEST.year - 1}")]
    utc = value.astimezone(UTC)
    if utc.minute or utc.second or utc.microsecond:
        return [FieldError(name, "must be on a whole UTC hour: statistics are kept per hour")]
    return []


def stats_window(
    *,
    since: datetime | None,
    until: datetime | None,
    tz: str,
    corp_id: str | None,
    now: datetime,
) -> StatsWindow:
    """The window a request names. Without `until`: up to now (the current hour included);
    without `since`: 30 days before `until`. At most 366 days."""
    zone = time_zone(tz)
    errors = [
        *(_on_the_hour("since", since) if since is not None else []),
        *(_on_the_hour("until", until) if until is not None else []),
    ]
    if errors:
        raise Invalid(errors)
    if until is None:
        until = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + HOUR
    if since is None:
        since = max(until - DEFAULT_SPAN, EARLIEST)
    if since >= until:
        raise Invalid([FieldError("since", "must be before until")])
    if until - since > MAX_SPAN:
        raise Invalid([FieldError("until", f"at most {MAX_SPAN.days} days after since")])
    return StatsWindow(since.astimezone(UTC), until.astimezone(UTC), zone, corp_id)


def _range_sql(column: str, window: StatsWindow, params: dict[str, Any]) -> str:
    params.update(since=window.since, until=window.until)
    where = f"{column} >= :since AND {column} < :until"
    if window.corp_id is not None:
        params["corp_id"] = window.corp_id
        where += " AND corp_id = :corp_id"
    return where


def _day_sql(column: str, days: Sequence[tuple[date, datetime]], params: dict[str, Any]) -> str:
    """The 1-based index of the day a time falls in (the days' starts are ascending)."""
    params["starts"] = [start for _, start in days]
    return f"width_bucket({column}, CAST(:starts AS timestamptz[]))"


# customers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerCounts:
    key: str
    added: int = 0
    churned: int = 0
    deleted_by_member: int = 0
    churned_7d: int = 0

    @property
    def net(self) -> int:
        return self.added - self.churned - self.deleted_by_member


async def customer_stats(
    session: AsyncSession, window: StatsWindow, group_by: CustomerKey
) -> list[CustomerCounts]:
    """By day: every day of the window, in order, zeros included; by state ('' for no
    channel) or userid: those with any count, in key order."""
    params: dict[str, Any] = {}
    days = window.hourly_days() if group_by == "day" else []
    key = _day_sql("hour", days, params) if group_by == "day" else group_by
    rows = await session.execute(
        text(
            f"SELECT {key} AS key, sum(added) AS added, sum(churned) AS churned,"  # noqa: S608 - fixed fragments only
            " sum(deleted_by_member) AS deleted_by_member, sum(churned_7d) AS churned_7d"
            f" FROM customer_stats WHERE {_range_sql('hour', window, params)}"
            " GROUP BY 1 ORDER BY 1"
        ),
        params,
    )
    counted = {row.key: row for row in rows}
    if group_by != "day":
        return [_customer_counts(key, row) for key, row in counted.items()]
    return [
        _customer_counts(day.isoformat(), counted.get(number))
        for number, (day, _) in enumerate(days, start=1)
    ]


def _customer_counts(key: str, row: Any) -> CustomerCounts:
    if row is None:
        return CustomerCounts(key)
    return CustomerCounts(key, row.added, row.churned, row.deleted_by_member, row.churned_7d)


# groups ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """joins_by_scene / quits_by_scene: WeCom's JoinScene / QuitScene as text ("0", "3"…),
    "unknown" for a change that carried none."""

    key: str
    joins: int = 0
    quits: int = 0
    joins_by_scene: dict[str, int] = field(default_factory=dict)
    quits_by_scene: dict[str, int] = field(default_factory=dict)


async def group_stats(
    session: AsyncSession, window: StatsWindow, group_by: GroupKey
) -> list[GroupCounts]:
    """By day: every day of the window, in order; by chat_id: the groups with any change,
    in chat_id order."""
    params: dict[str, Any] = {}
    days = window.hourly_days() if group_by == "day" else []
    key = _day_sql("hour", days, params) if group_by == "day" else "chat_id"
    rows = await session.execute(
        text(
            f"SELECT {key} AS key, change, scene, sum(members) AS members"  # noqa: S608 - fixed fragments only
            f" FROM group_stats WHERE {_range_sql('hour', window, params)}"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        params,
    )
    changes: dict[Any, dict[str, dict[str, int]]] = {}
    for row in rows:
        by_scene = changes.setdefault(row.key, {"join": {}, "quit": {}})[row.change]
        by_scene["unknown" if row.scene < 0 else str(row.scene)] = row.members
    if group_by != "day":
        return [_group_counts(chat_id, found) for chat_id, found in changes.items()]
    return [
        _group_counts(day.isoformat(), changes.get(number, {}))
        for number, (day, _) in enumerate(days, start=1)
    ]


def _group_counts(key: str, changes: dict[str, dict[str, int]]) -> GroupCounts:
    joins, quits = changes.get("join", {}), changes.get("quit", {})
    return GroupCounts(key, sum(joins.values()), sum(quits.values()), joins, quits)


# welcomes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReasonCount:
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class Latency:
    """From the event's CreateTime to the send's end, in ms, over the welcomes sent."""

    p50: int
    p95: int
    max: int


@dataclass(frozen=True, slots=True)
class WelcomeDay:
    """Welcome actions by the day they were written (their event processed, normally
    within a second of it), by outcome: sent (succeeded), skipped, expired, failed; each
    outcome's most frequent reasons (a failure without one: its error code)."""

    key: str
    counts: dict[Outcome, int]
    reasons: dict[Outcome, list[ReasonCount]]
    latency_ms: Latency | None


_WELCOME_REASONS = """
    SELECT day, status, reason, n, total FROM (
        SELECT day, status, reason, count(*) AS n,
               sum(count(*)) OVER (PARTITION BY day, status) AS total,
               row_number() OVER (PARTITION BY day, status ORDER BY count(*) DESC, reason)
                   AS rank
        FROM (
            SELECT {day} AS day, status, coalesce(reason, error_code, '') AS reason
            FROM actions
            WHERE kind = 'welcome' AND status IN ('succeeded', 'skipped', 'expired', 'failed')
              AND {range}
        ) AS welcome
        GROUP BY day, status, reason
    ) AS counted
    WHERE rank <= :top
"""

# A welcome's deadline is its event's CreateTime + 20 s (app/automations/triggers.py), so
# the latency needs no join with events: finished_at - deadline + 20 s. One day at a time,
# so each percentile sorts a day's sends in memory rather than the window's on disk.
_WELCOME_LATENCY = """
    SELECT d.day, l.latency
    FROM unnest(CAST(:starts AS timestamptz[]), CAST(:stops AS timestamptz[]))
        WITH ORDINALITY AS d (start, stop, day)
    CROSS JOIN LATERAL (
        SELECT percentile_disc(ARRAY[0.5, 0.95, 1]) WITHIN GROUP (ORDER BY finished_at - deadline)
            AS latency
        FROM actions
        WHERE kind = 'welcome' AND status = 'succeeded'
          AND created_at >= d.start AND created_at < d.stop {corp}
    ) AS l
    WHERE l.latency IS NOT NULL
"""


async def welcome_stats(session: AsyncSession, window: StatsWindow) -> list[WelcomeDay]:
    """Every day of the window, in order, zeros included."""
    days = window.days()
    params: dict[str, Any] = {"top": TOP_REASONS}
    reasons_sql = _WELCOME_REASONS.format(
        day=_day_sql("created_at", days, params), range=_range_sql("created_at", window, params)
    )
    counts: dict[int, dict[Outcome, int]] = defaultdict(dict)
    reasons: dict[int, dict[Outcome, list[ReasonCount]]] = defaultdict(
        lambda: {outcome: [] for outcome in OUTCOMES}
    )
    for row in await session.execute(text(reasons_sql), params):
        outcome = _OUTCOME_OF_STATUS[row.status]
        counts[row.day][outcome] = int(row.total)
        reasons[row.day][outcome].append(ReasonCount(row.reason, row.n))
    latencies = await _latencies(session, window, days)
    return [
        WelcomeDay(
            key=day.isoformat(),
            counts={outcome: counts[number].get(outcome, 0) for outcome in OUTCOMES},
            reasons=reasons[number],
            latency_ms=latencies.get(number),
        )
        for number, (day, _) in enumerate(days, start=1)
    ]


async def _latencies(
    session: AsyncSession, window: StatsWindow, days: Sequence[tuple[date, datetime]]
) -> dict[int, Latency]:
    starts = [start for _, start in days]
    params: dict[str, Any] = {"starts": starts, "stops": [*starts[1:], window.until]}
    corp = ""
    if window.corp_id is not None:
        params["corp_id"] = window.corp_id
        corp = "AND corp_id = :corp_id"
    rows = await session.execute(text(_WELCOME_LATENCY.format(corp=corp)), params)
    return {row.day: Latency(*(_ms(value) for value in row.latency)) for row in rows}


def _ms(finished_minus_deadline: timedelta) -> int:
    """Whole milliseconds, rounded down."""
    since_event = finished_minus_deadline + timedelta(seconds=WELCOME_CODE_SECONDS)
    return since_event // timedelta(milliseconds=1)
