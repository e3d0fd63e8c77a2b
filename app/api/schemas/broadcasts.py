"""Broadcasts on the wire. The request is the service's own BroadcastSpec
(app/broadcasts/spec.py): the CLI's `broadcasts send` takes exactly the same thing."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.broadcasts.audience import Resolved
from app.broadcasts.service import Cancelled, MemberOutcome, Reminded
from app.queries.broadcasts import BroadcastDetail, BroadcastSummary

_FROM = ConfigDict(from_attributes=True)

FUNNEL_EXAMPLE: dict[str, Any] = {
    "audience": 120,
    "tasks": 3,
    "confirmed": 2,
    "sent": 71,
    "not_friend": 2,
    "over_limit": 9,
    "failed": 1,
    "pending": 37,
}


class FunnelOut(BaseModel):
    """sent + not_friend + over_limit + failed + pending = audience."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [FUNNEL_EXAMPLE]}
    )

    audience: int = Field(description="Customers (or groups) resolved when it was made.")
    tasks: int = Field(description="WeCom tasks made (one per member, more past 10 000).")
    confirmed: int = Field(description="Tasks whose member has sent them from the client.")
    sent: int = Field(description="WeCom send status 1.")
    not_friend: int = Field(description="Status 2: no longer a friend of the member.")
    over_limit: int = Field(
        description="Status 3: had already received the mass messages the corp's receive "
        "limit allows."
    )
    failed: int = Field(description="WeCom would not take them: fail_list, or a task refused.")
    pending: int = Field(description="Status 0: not sent (yet): the member has not sent it.")


class TaskOut(BaseModel):
    model_config = _FROM

    userid: str
    chunk: int = Field(description="Which of the member's tasks (past WeCom's per-call limit).")
    recipients: int
    status: str = Field(description="pending, created, sent, failed, skipped or cancelled.")
    msgid: str | None
    adopted: bool = Field(
        description="Found at WeCom after add_msg_template's answer was lost, not made again."
    )
    fail_list: list[str]
    errcode: int | None
    errmsg: str | None
    action_id: int | None
    created_at: AwareDatetime | None
    confirmed_at: AwareDatetime | None
    reminders: list[AwareDatetime]


class MemberOut(BaseModel):
    model_config = _FROM

    userid: str
    funnel: FunnelOut
    tasks: list[TaskOut]


class BroadcastItem(BaseModel):
    model_config = _FROM

    id: int
    app: str
    corp_id: str
    chat_type: str = Field(description="single (customers) or group (customer groups).")
    status: str = Field(description="sending, waiting, completed or cancelled.")
    audience: dict[str, Any] = Field(description="The audience as it was asked for.")
    content: dict[str, Any]
    audience_size: int
    created_by: str | None
    created_at: AwareDatetime
    horizon_at: AwareDatetime = Field(description="Results are read until then at the latest.")
    cancelled_at: AwareDatetime | None
    completed_at: AwareDatetime | None
    polled_at: AwareDatetime | None = Field(description="When results were last read.")
    poll_error: str | None = Field(description="What WeCom answered at the last read, if wrong.")


class BroadcastPage(Page[BroadcastItem]):
    pass


class BroadcastOut(BroadcastItem):
    funnel: FunnelOut
    failures: dict[str, int] = Field(
        description="The failed ones by cause: `fail_list` (WeCom's), `wecom.<errcode>`."
    )
    members: list[MemberOut]

    @classmethod
    def of(cls, detail: BroadcastDetail) -> "BroadcastOut":
        return cls.model_validate(
            {
                **BroadcastItem.model_validate(detail.broadcast).model_dump(),
                "funnel": detail.funnel,
                "failures": detail.failures,
                "members": detail.members,
            }
        )


def item(summary: BroadcastSummary) -> BroadcastItem:
    return BroadcastItem.model_validate(summary)


class ShareOut(BaseModel):
    model_config = _FROM

    userid: str
    recipients: int
    tasks: int


class DryRunOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dry_run": True,
                    "audience": 3,
                    "members": [
                        {"userid": "lisi", "recipients": 1, "tasks": 1},
                        {"userid": "zhangsan", "recipients": 2, "tasks": 1},
                    ],
                    "unmatched": 0,
                    "unmatched_ids": [],
                }
            ]
        }
    )

    dry_run: bool = True
    audience: int
    members: list[ShareOut]
    unmatched: int = Field(
        description="Ids given one by one (external_userids, chat_ids) it would not reach."
    )
    unmatched_ids: list[str] = Field(description="The first 100 of them.")

    @classmethod
    def of(cls, resolved: Resolved) -> "DryRunOut":
        return cls(
            audience=resolved.audience,
            members=[ShareOut.model_validate(m) for m in resolved.members],
            unmatched=resolved.unmatched,
            unmatched_ids=list(resolved.unmatched_ids),
        )


class MemberOutcomeOut(BaseModel):
    model_config = _FROM

    userid: str
    msgid: str
    error: str | None = None


def _outcomes(outcomes: tuple[MemberOutcome, ...]) -> list[MemberOutcomeOut]:
    return [MemberOutcomeOut.model_validate(o) for o in outcomes]


class RemindOut(BaseModel):
    reminded: list[MemberOutcomeOut]
    limited: list[MemberOutcomeOut] = Field(
        description="WeCom refused (41094): 3 reminders per task in 24 hours."
    )
    already_sent: list[MemberOutcomeOut]
    failed: list[MemberOutcomeOut]

    @classmethod
    def of(cls, reminded: Reminded) -> "RemindOut":
        return cls(
            reminded=_outcomes(reminded.reminded),
            limited=_outcomes(reminded.limited),
            already_sent=_outcomes(reminded.already_sent),
            failed=_outcomes(reminded.failed),
        )


class CancelOut(BaseModel):
    broadcast: BroadcastOut
    cancelled: list[MemberOutcomeOut]
    already_sent: list[MemberOutcomeOut] = Field(description="Sent before: a cancel cannot undo.")
    failed: list[MemberOutcomeOut] = Field(description="Not cancelled: cancel again to retry.")

    @classmethod
    def of(cls, cancelled: Cancelled) -> "CancelOut":
        return cls(
            broadcast=BroadcastOut.of(cancelled.broadcast),
            cancelled=_outcomes(cancelled.cancelled),
            already_sent=_outcomes(cancelled.already_sent),
            failed=_outcomes(cancelled.failed),
        )
