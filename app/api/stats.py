"""/api/v1/stats: customers added and lost, welcome messages, group joins and quits, over a
time range (whole hours, at most 366 days; by default the last 30 days), for an app's corp
or every corp, with days in a time zone."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import HubDep, ReadKey
from app.api.pagination import Instant
from app.api.schemas.stats import (
    CustomerCountsOut,
    CustomerStatsOut,
    GroupCountsOut,
    GroupStatsOut,
    WelcomeDayOut,
    WelcomeStatsOut,
    window_fields,
)
from app.errors import FieldError, Invalid
from app.queries import app_scope
from app.queries import stats as queries
from app.queries.channels import channel_states, customers_by_channel
from app.queries.stats import DEFAULT_TZ, CustomerKey, GroupKey, StatsWindow

router = APIRouter(prefix="/stats", tags=["Statistics"])

AppSlug = Annotated[
    str | None, Query(max_length=64, description="An app's slug: its corp's numbers only.")
]
Since = Annotated[
    Instant | None,
    Query(description="From this hour (a whole UTC hour); default: 30 days before `until`."),
]
Until = Annotated[
    Instant | None,
    Query(description="To this hour, not included (a whole UTC hour); default: now."),
]
Tz = Annotated[str, Query(max_length=64, description="The IANA time zone the days are counted in.")]
CustomerGrouping = CustomerKey | Literal["channel"]


async def _window(
    session: AsyncSession, app: str | None, since: datetime | None, until: datetime | None, tz: str
) -> StatsWindow:
    scope = await app_scope(session, app)
    return queries.stats_window(
        since=since,
        until=until,
        tz=tz,
        corp_id=scope.corp_id if scope else None,
        now=datetime.now(UTC),
    )


@router.get("/customers", response_model=CustomerStatsOut)
async def customer_stats(
    _: ReadKey,
    hub: HubDep,
    group_by: CustomerGrouping = "day",
    app: AppSlug = None,
    since: Since = None,
    until: Until = None,
    tz: Tz = DEFAULT_TZ,
) -> CustomerStatsOut:
    """New customers, churn (the customer deleted the member), customers deleted by the
    member and net growth, by day, by the channel `state` of the add that brought each
    customer, by channel (the key is the channel's id; '' for states that are no
    channel's; needs `app`), or by member. Counted from wecom-hub's own event history,
    each WeCom event once."""
    async with hub.sessionmaker() as session:
        window = await _window(session, app, since, until, tz)
        if group_by != "channel":
            counts = await queries.customer_stats(session, window, group_by)
        elif window.corp_id is None:
            raise Invalid([FieldError("app", "needed with group_by=channel")])
        else:
            counts = customers_by_channel(
                await queries.customer_stats(session, window, "state"),
                await channel_states(session, window.corp_id),
            )
    return CustomerStatsOut(
        **window_fields(window), data=[CustomerCountsOut.of(row) for row in counts]
    )


@router.get("/welcome", response_model=WelcomeStatsOut)
async def welcome_stats(
    _: ReadKey,
    hub: HubDep,
    app: AppSlug = None,
    since: Since = None,
    until: Until = None,
    tz: Tz = DEFAULT_TZ,
) -> WelcomeStatsOut:
    """Welcome messages per day: sent, skipped, expired and failed, with their reasons, and
    how long after the customer's add they were sent."""
    async with hub.sessionmaker() as session:
        window = await _window(session, app, since, until, tz)
        days = await queries.welcome_stats(session, window)
    return WelcomeStatsOut(**window_fields(window), data=[WelcomeDayOut.of(day) for day in days])


@router.get("/groups", response_model=GroupStatsOut)
async def group_stats(
    _: ReadKey,
    hub: HubDep,
    group_by: GroupKey = "day",
    app: AppSlug = None,
    since: Since = None,
    until: Until = None,
    tz: Tz = DEFAULT_TZ,
) -> GroupStatsOut:
    """Members who joined and quit customer groups, by WeCom's join and quit scenes, per
    day or per group."""
    async with hub.sessionmaker() as session:
        window = await _window(session, app, since, until, tz)
        counts = await queries.group_stats(session, window, group_by)
    return GroupStatsOut(**window_fields(window), data=[GroupCountsOut.of(row) for row in counts])
