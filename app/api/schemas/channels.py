"""Channels on the wire. A channel's request and answer models are the service's own
(ChannelSpec, ChannelPatch, ChannelView in app/channels/service.py), so the CLI and the API
accept the same thing; here are the list envelope and the numbers."""

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.api.schemas.stats import WindowOut, window_fields
from app.channels.service import ChannelView
from app.queries.channels import ChannelCounts
from app.queries.stats import StatsWindow

CHANNEL_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "kind": "contact_way",
    "name": "门店A",
    "app": "shop",
    "corp_id": "ww1234567890abcdef",
    "state": "ch_k5v3xq2mzt7a4bnp",
    "status": "active",
    "source": "api",
    "config_id": "42b34949e138eb6e027c123cba77fAAA",
    "qr_code": "https://wework.qpic.cn/wwpic/…/0",
    "userids": ["zhangsan"],
    "party_ids": [],
    "chat_ids": [],
    "skip_verify": True,
    "remark": "",
    "welcome_rule_id": 31,
    "tag_rule_id": 32,
    "created_at": "2026-11-29T09:00:00+00:00",
    "updated_at": "2026-11-29T09:00:00+00:00",
}
_COUNTS_EXAMPLE: dict[str, Any] = {
    "added": 120,
    "active": 111,
    "churned": 9,
    "churned_7d": 6,
    "welcomed": 117,
    "welcome_skipped": 0,
    "welcome_expired": 2,
    "welcome_failed": 1,
    "tagged": 118,
    "joined": 0,
    "quit": 0,
}


class ChannelPage(Page[ChannelView]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [CHANNEL_EXAMPLE], "next_cursor": None}]}
    )


class ChannelCountsOut(BaseModel):
    added: int = Field(description="Customers added through the channel (one per member).")
    active: int = Field(description="Of those, still friends of the member.")
    churned: int = Field(description="Of those, who deleted the member since.")
    churned_7d: int = Field(description="Of the churned, within 7 days of being added.")
    welcomed: int = Field(description="Welcome messages sent for the channel's state.")
    welcome_skipped: int
    welcome_expired: int
    welcome_failed: int
    tagged: int = Field(description="Customers the channel's tags were applied to.")
    joined: int = Field(description="join_way: customers who joined a group with its state.")
    quit: int = Field(description="join_way: of those, who left the group since.")


class ChannelDayOut(ChannelCountsOut):
    day: str = Field(description="YYYY-MM-DD, in `tz`.")


class ChannelStatsOut(WindowOut, ChannelCountsOut):
    """Totals over the window at the top level, then each day of the window."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel_id": 7,
                    "state": "ch_k5v3xq2mzt7a4bnp",
                    "since": "2026-10-30T16:00:00Z",
                    "until": "2026-11-29T16:00:00Z",
                    "tz": "Asia/Shanghai",
                    **_COUNTS_EXAMPLE,
                    "by_day": [{"day": "2026-11-29", **_COUNTS_EXAMPLE}],
                }
            ]
        }
    )

    channel_id: int
    state: str | None
    by_day: list[ChannelDayOut]

    @classmethod
    def of(
        cls,
        channel: ChannelView,
        window: StatsWindow,
        totals: ChannelCounts,
        by_day: list[ChannelCounts],
    ) -> "ChannelStatsOut":
        def counts(row: ChannelCounts) -> dict[str, Any]:
            return {k: v for k, v in asdict(row).items() if k != "key"}

        return cls(
            channel_id=channel.id,
            state=channel.state,
            **window_fields(window),
            **counts(totals),
            by_day=[ChannelDayOut(day=row.key, **counts(row)) for row in by_day],
        )
