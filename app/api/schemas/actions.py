"""Actions on the wire: every side effect wecom-hub made or will make, with its status,
reason and error, and each attempt."""

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.actions.kinds import ActionKind, ActionStatus
from app.api.schemas import Page

ACTION_EXAMPLE: dict[str, Any] = {
    "id": 1207,
    "kind": "welcome",
    "app": "shop",
    "target": "wmqfasd1e1927831291723123109r712",
    "event_id": 88213,
    "status": "expired",
    "reason": "deadline passed while retrying",
    "error": {"code": "wecom.45009", "message": "api freq out of limit"},
    "attempts": 4,
    "wecom_calls": 19,
    "deadline": "2026-11-29T06:01:20+00:00",
    "next_attempt_at": "2026-11-29T06:01:19.2+00:00",
    "created_at": "2026-11-29T06:01:00.04+00:00",
    "finished_at": "2026-11-29T06:01:19.9+00:00",
}


class ActionError(BaseModel):
    code: str = Field(description="`wecom.<errcode>`, `wecom.unanswered`, `crash`, …")
    message: str | None = Field(description="WeCom's errmsg, or what went wrong.")


class ActionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ACTION_EXAMPLE]})

    id: int
    kind: ActionKind
    app: str | None = Field(description="Slug of the app it is done as.")
    target: str = Field(description="Whom it is for: external_userid, chat_id, open_kfid, …")
    event_id: int | None = Field(description="The event that caused it; null if asked for.")
    status: ActionStatus
    reason: str | None = Field(description="Why it ended as it did, in words.")
    error: ActionError | None = Field(description="The last error seen, even if it then worked.")
    attempts: int = Field(
        description="Passes of the action runner, counted again from 0 after POST …/retry."
    )
    wecom_calls: int = Field(
        description="HTTP requests sent to WeCom by all its attempts, the sum over "
        "attempts_log: the WeCom client's own retries within a pass included."
    )
    deadline: AwareDatetime | None = Field(description="Never tried after this.")
    next_attempt_at: AwareDatetime
    created_at: AwareDatetime
    finished_at: AwareDatetime | None

    @classmethod
    def of(cls, summary: Any) -> "ActionOut":
        values = {name: getattr(summary, name) for name in summary.__dataclass_fields__}
        code, message = values.pop("error_code"), values.pop("error_message")
        values["error"] = None if code is None else ActionError(code=code, message=message)
        return cls.model_validate(values)


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    started_at: AwareDatetime
    finished_at: AwareDatetime
    duration_ms: float
    outcome: str = Field(
        description="succeeded, skipped, failed, expired, retry, or lease_lost (finished "
        "after another runner had taken the action over)."
    )
    error_code: str | None
    message: str | None
    http_status: int | None = Field(description="A webhook receiver's answer.")
    response: str | None = Field(description="The first KB of a webhook receiver's answer.")


class ActionAttemptOut(AttemptOut):
    """An action's attempt; a webhook delivery's attempts (AttemptOut) call no WeCom API."""

    wecom_calls: int = Field(
        description="HTTP requests this attempt sent to WeCom: each retry of a -1, 45009 or "
        "timeout within the pass, and a gettoken it had to make (a token fetched for "
        "others is theirs). 0 if it called none."
    )


class ActionDetailOut(ActionOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **ACTION_EXAMPLE,
                    "payload": {"welcome_code": "CALLBACK_CODE", "rule_name": "stores"},
                    "attempts_log": [
                        {
                            "attempt": 1,
                            "started_at": "2026-11-29T06:01:00.05+00:00",
                            "finished_at": "2026-11-29T06:01:00.31+00:00",
                            "duration_ms": 262.0,
                            "outcome": "retry",
                            "error_code": "wecom.45009",
                            "message": "api freq out of limit",
                            "http_status": None,
                            "response": None,
                            "wecom_calls": 4,
                        }
                    ],
                }
            ]
        }
    )

    payload: dict[str, Any] = Field(description="What the handler works from.")
    attempts_log: list[ActionAttemptOut]


class ActionPage(Page[ActionOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [ACTION_EXAMPLE], "next_cursor": None}]}
    )


class Accepted(BaseModel):
    """An operation asked for: it is an action now; GET /api/v1/actions/{id} follows it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"action": {**ACTION_EXAMPLE, "status": "pending", "reason": None}}]
        }
    )

    action: ActionOut
