"""A channel's numbers, from wecom-hub's own state (WeCom has no per-code statistics):

- customers: the follows (member ↔ customer) whose state is the channel's, by the day they
  were added: `added`, still friends (`active`), `churned` (the customer deleted the member),
  `churned_7d` (within 7 days of the add). A follow is one row per member and customer, so a
  customer who left and came back through the channel counts once, as they are now (the
  hourly counters of /stats/customers count each add event instead). Half adds are left out,
  as there. Customers `sync` imported count by the add time WeCom gave.
- welcomes: the welcome actions of the channel's state, by the day they were written:
  `welcomed` (sent), `welcome_skipped`, `welcome_expired`, `welcome_failed`. A skipped one
  may carry no state in its payload (no welcome_code, or no rule matched): its event says it.
- `tagged`: tag actions the channel's own tag rule caused that succeeded (for customers
  whose follow still carries the state).
- join ways: members who joined a group with the way's state (groupchat/get's
  member_list[].state, kept by enrichment and sync), by the day they joined: `joined`, and of
  those, `quit` since.

Days are local days of the window's zone, as in app/queries/stats.py (its StatsWindow).
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.queries.stats import CustomerCounts, StatsWindow


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """What the numbers of one channel are keyed by."""

    corp_id: str
    state: str | None
    tag_rule_id: int | None


@dataclass(slots=True)
class ChannelCounts:
    key: str
    added: int = 0
    active: int = 0
    churned: int = 0
    churned_7d: int = 0
    welcomed: int = 0
    welcome_skipped: int = 0
    welcome_expired: int = 0
    welcome_failed: int = 0
    tagged: int = 0
    joined: int = 0
    quit: int = 0


COUNTS = tuple(f.name for f in fields(ChannelCounts) if f.name != "key")

_FOLLOWS = """
    SELECT width_bucket(added_at, CAST(:starts AS timestamptz[])) AS day,
           count(*) AS added,
           count(*) FILTER (WHERE status = 'active') AS active,
           count(*) FILTER (WHERE status = 'deleted_by_customer') AS churned,
           count(*) FILTER (
               WHERE status = 'deleted_by_customer'
                 AND deleted_by_customer_at < added_at + interval '7 days'
           ) AS churned_7d
    FROM follows
    WHERE corp_id = :corp_id AND state = :state AND status <> 'half'
      AND added_at >= :since AND added_at < :until
    GROUP BY 1
"""

# The channel's customers: follows by state (ix_follows_state), a few rows per customer.
_CUSTOMERS = "SELECT external_userid FROM follows WHERE corp_id = :corp_id AND state = :state"

# Welcomes that carry the state read ix_actions_welcome_state (corp, state, created_at).
# Those that carry none (skipped: no welcome_code, or no rule matched) are read customer by
# customer of the channel (ix_actions_target_id), their events saying the state: the corp's
# stateless welcomes may be most of its welcomes, and Postgres, which cannot tell how many
# lack a state, would otherwise read them all (OFFSET 0 keeps the lateral a per-customer
# loop instead of a join it may turn around).
_WELCOMES = f"""
    SELECT day, status, count(*) AS n FROM (
        SELECT width_bucket(created_at, CAST(:starts AS timestamptz[])) AS day, status
        FROM actions
        WHERE kind = 'welcome' AND corp_id = :corp_id AND payload ->> 'state' = :state
          AND created_at >= :since AND created_at < :until
        UNION ALL
        SELECT width_bucket(a.created_at, CAST(:starts AS timestamptz[])), a.status
        FROM (SELECT DISTINCT external_userid FROM ({_CUSTOMERS}) AS f) AS customer
        CROSS JOIN LATERAL (
            SELECT created_at, status, event_id FROM actions
            WHERE target = customer.external_userid
              AND kind = 'welcome' AND corp_id = :corp_id AND payload ->> 'state' IS NULL
              AND created_at >= :since AND created_at < :until
            OFFSET 0
        ) AS a
        JOIN events e ON e.id = a.event_id
        WHERE e.payload ->> 'State' = :state
    ) AS welcome
    GROUP BY 1, 2
"""  # noqa: S608 - a constant

# The channel's own tag rule fires only for its state's customers: read through them
# (ix_actions_target_id), not through every mark_tag action of the corp.
_TAGGED = f"""
    SELECT width_bucket(created_at, CAST(:starts AS timestamptz[])) AS day, count(*) AS tagged
    FROM actions
    WHERE target IN ({_CUSTOMERS})
      AND kind = 'mark_tag' AND status = 'succeeded' AND corp_id = :corp_id
      AND payload -> 'rule_ids' @> jsonb_build_array(CAST(:rule_id AS bigint))
      AND created_at >= :since AND created_at < :until
    GROUP BY 1
"""  # noqa: S608 - a constant

# ix_group_members_state (app/models/channel.py).
_JOINS = """
    SELECT width_bucket(joined_at, CAST(:starts AS timestamptz[])) AS day,
           count(*) AS joined, count(*) FILTER (WHERE quit_at IS NOT NULL) AS quit
    FROM group_members
    WHERE corp_id = :corp_id AND state = :state
      AND joined_at >= :since AND joined_at < :until
    GROUP BY 1
"""

_WELCOME_FIELD = {
    "succeeded": "welcomed",
    "skipped": "welcome_skipped",
    "expired": "welcome_expired",
    "failed": "welcome_failed",
}


async def channel_stats(
    session: AsyncSession, channel: ChannelRef, window: StatsWindow
) -> tuple[ChannelCounts, list[ChannelCounts]]:
    """(totals over the window, every day of the window in order, zeros included). A
    channel without a state (imported without one) has nothing to count."""
    days = window.days()
    by_day = [ChannelCounts(day.isoformat()) for day, _ in days]
    if channel.state is not None:
        params: dict[str, Any] = {
            "starts": [start for _, start in days],
            "since": window.since,
            "until": window.until,
            "corp_id": channel.corp_id,
            "state": channel.state,
        }
        await _add(session, _FOLLOWS, params, by_day)
        await _add(session, _JOINS, params, by_day)
        for row in await session.execute(text(_WELCOMES), params):
            field = _WELCOME_FIELD.get(row.status)
            if field is not None:
                _bump(by_day, row.day, field, row.n)
        if channel.tag_rule_id is not None:
            await _add(session, _TAGGED, {**params, "rule_id": channel.tag_rule_id}, by_day)
    totals = ChannelCounts("total")
    for day_counts in by_day:
        for name in COUNTS:
            setattr(totals, name, getattr(totals, name) + getattr(day_counts, name))
    return totals, by_day


async def _add(
    session: AsyncSession, sql: str, params: dict[str, Any], by_day: list[ChannelCounts]
) -> None:
    for row in (await session.execute(text(sql), params)).mappings():
        for name, value in row.items():
            if name != "day":
                _bump(by_day, row["day"], name, value)


def _bump(by_day: Sequence[ChannelCounts], day: int, name: str, value: int) -> None:
    """width_bucket numbers the days from 1; 0 would be before the first (never, given the
    range), past the last is the last day's (the range ends at `until`)."""
    index = min(max(day, 1), len(by_day)) - 1
    counts = by_day[index]
    setattr(counts, name, getattr(counts, name) + int(value))


@dataclass(frozen=True, slots=True)
class ChannelState:
    id: int
    name: str
    state: str


async def channel_states(session: AsyncSession, corp_id: str) -> dict[str, ChannelState]:
    """The corp's channels by state (for the stats API's `channel` grouping)."""
    rows = await session.execute(
        text("SELECT id, name, state FROM channels WHERE corp_id = :corp_id AND state IS NOT NULL"),
        {"corp_id": corp_id},
    )
    return {row.state: ChannelState(row.id, row.name, row.state) for row in rows}


def customers_by_channel(
    by_state: Sequence[CustomerCounts], channels: dict[str, ChannelState]
) -> list[CustomerCounts]:
    """/stats/customers by channel: the counts of each state summed under its channel's id
    (as text, in id order); those of states that are no channel's under ''."""
    summed: dict[str, CustomerCounts] = {}
    for row in by_state:
        found = channels.get(row.key)
        key = str(found.id) if found else ""
        before = summed.get(key, CustomerCounts(key))
        summed[key] = CustomerCounts(
            key,
            before.added + row.added,
            before.churned + row.churned,
            before.deleted_by_member + row.deleted_by_member,
            before.churned_7d + row.churned_7d,
        )
    return sorted(summed.values(), key=lambda c: (c.key != "", int(c.key or 0)))
