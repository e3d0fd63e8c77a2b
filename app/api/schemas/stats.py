"""Statistics on the wire: the window that was counted (the defaults filled in), and a row
per key (a day, a channel state, a channel, a member or a group)."""

from dataclasses import asdict
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.queries.stats import (
    OUTCOMES,
    CustomerCounts,
    GroupCounts,
    StatsWindow,
    WelcomeDay,
)

_WINDOW_EXAMPLE: dict[str, Any] = {
    "since": "2026-10-30T16:00:00Z",
    "until": "2026-11-29T16:00:00Z",
    "tz": "Asia/Shanghai",
}
_CUSTOMERS_EXAMPLE: dict[str, Any] = {
    "key": "2026-11-29",
    "added": 120,
    "churned": 9,
    "deleted_by_member": 2,
    "net": 109,
    "churned_7d": 6,
}
_GROUPS_EXAMPLE: dict[str, Any] = {
    "key": "2026-11-29",
    "joins": 41,
    "quits": 7,
    "joins_by_scene": {"0": 11, "3": 30},
    "quits_by_scene": {"0": 6, "1": 1},
}
_WELCOME_EXAMPLE: dict[str, Any] = {
    "key": "2026-11-29",
    "sent": 96,
    "skipped": 22,
    "expired": 1,
    "failed": 1,
    "reasons": {
        "sent": [
            {"reason": "rule 'stores'", "count": 80},
            {"reason": "rule 'default'", "count": 16},
        ],
        "skipped": [{"reason": "no enabled welcome rule matches state 'expo'", "count": 22}],
        "expired": [{"reason": "deadline passed while retrying", "count": 1}],
        "failed": [{"reason": "wecom.60011", "count": 1}],
    },
    "latency_ms": {"p50": 412, "p95": 1380, "max": 4210},
}


class WindowOut(BaseModel):
    since: AwareDatetime = Field(description="The first hour counted.")
    until: AwareDatetime = Field(
        description="The end of the last hour counted (not included): without `until`, the "
        "end of the current hour."
    )
    tz: str = Field(description="The time zone of the days.")


def window_fields(window: StatsWindow) -> dict[str, Any]:
    """WindowOut's fields, for the answers that extend it."""
    return {"since": window.since, "until": window.until, "tz": window.tz.key}


class CustomerCountsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_CUSTOMERS_EXAMPLE]})

    key: str = Field(
        description="The day (YYYY-MM-DD, in `tz`), the channel state ('' for none), the "
        "channel's id ('' for none) or the member's userid."
    )
    added: int = Field(description="add_external_contact events (half adds are not counted).")
    churned: int = Field(description="The customer deleted the member (del_follow_user).")
    deleted_by_member: int = Field(
        description="The member deleted the customer (del_external_contact), not by a transfer."
    )
    net: int = Field(description="added - churned - deleted_by_member.")
    churned_7d: int = Field(
        description="Of the churned, those whose add by that member was less than 7 days before."
    )

    @classmethod
    def of(cls, counts: CustomerCounts) -> "CustomerCountsOut":
        return cls(**asdict(counts), net=counts.net)


class CustomerStatsOut(WindowOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_WINDOW_EXAMPLE, "data": [_CUSTOMERS_EXAMPLE]}]}
    )

    data: list[CustomerCountsOut]


class GroupCountsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_GROUPS_EXAMPLE]})

    key: str = Field(description="The day (YYYY-MM-DD, in `tz`) or the group's chat_id.")
    joins: int = Field(description="Members who joined (customers and the corp's members).")
    quits: int = Field(description="Members who quit.")
    joins_by_scene: dict[str, int] = Field(
        description="By WeCom's JoinScene (0 invited, 3 by QR code; 'unknown': none given)."
    )
    quits_by_scene: dict[str, int] = Field(
        description="By WeCom's QuitScene (0 left, 1 removed; 'unknown': none given)."
    )

    @classmethod
    def of(cls, counts: GroupCounts) -> "GroupCountsOut":
        return cls(**asdict(counts))


class GroupStatsOut(WindowOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_WINDOW_EXAMPLE, "data": [_GROUPS_EXAMPLE]}]}
    )

    data: list[GroupCountsOut]


class ReasonCountOut(BaseModel):
    reason: str
    count: int


class WelcomeReasonsOut(BaseModel):
    """The 10 most frequent reasons of each outcome, most frequent first."""

    sent: list[ReasonCountOut] = Field(description="Which rule sent it.")
    skipped: list[ReasonCountOut]
    expired: list[ReasonCountOut]
    failed: list[ReasonCountOut] = Field(description="The reason, or else the error code.")


class LatencyOut(BaseModel):
    p50: int
    p95: int
    max: int


class WelcomeDayOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WELCOME_EXAMPLE]})

    key: str = Field(description="The day (YYYY-MM-DD, in `tz`) the welcomes were written on.")
    sent: int = Field(description="Welcome actions that succeeded.")
    skipped: int
    expired: int = Field(description="Not sent within the welcome code's 20 s.")
    failed: int
    reasons: WelcomeReasonsOut
    latency_ms: LatencyOut | None = Field(
        description="From the event's CreateTime to the end of the send, over the welcomes "
        "sent; null if none was."
    )

    @classmethod
    def of(cls, day: WelcomeDay) -> "WelcomeDayOut":
        return cls.model_validate(
            {
                "key": day.key,
                **day.counts,
                "reasons": {
                    outcome: [asdict(reason) for reason in day.reasons[outcome]]
                    for outcome in OUTCOMES
                },
                "latency_ms": asdict(day.latency_ms) if day.latency_ms else None,
            }
        )


class WelcomeStatsOut(WindowOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_WINDOW_EXAMPLE, "data": [_WELCOME_EXAMPLE]}]}
    )

    data: list[WelcomeDayOut]
