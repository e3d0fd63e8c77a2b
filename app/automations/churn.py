"""Churn alerts (流失提醒): when a customer deletes a member (`del_follow_user`), tell the
member, and whoever the rule's `notify` names (a supervisor), with an app message
(message/send as the app's AgentID). Never for `del_external_contact`: the member deleting
the customer knows already.

The trigger runs in the processor's transaction after the projection, so the follow as the
customer left it (channel `state`, `added_at`, `tag_ids`; only its status changed) is read
there and kept in the action's payload: a later re-add overwrites them. One enabled rule is
chosen (the most specific, then the highest priority, as for welcomes) and becomes one
`churn_alert` action; no matching rule, no action (most churns of most corps have none, and
a `skipped` row for each would bury the ones that matter). A rule that matched but cannot
be sent is a `skipped` action saying why: the app has no AgentID, or the customer came back
before this (late) deletion was processed.

The idempotency key is the churn itself (corp, member, customer, CreateTime), not the event
row: WeCom sends the same change to every app of the corp with customer-contact rights, so
two apps of one corp give one alert (from whichever processed it first), as do WeCom's
retries, replicas and replays.

Names are looked up when the alert is sent, not when it is queued: a customer who deletes
the member right after adding them may be enriched only in between. The text is rendered
with the rule's template as it was when the churn happened.
"""

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import enqueue
from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.automations.rules import CHURN_PLACEHOLDERS, ChurnContent, ChurnMatch, render
from app.automations.store import LoadedRule, RuleCache
from app.events import models as ev
from app.events.context import Context, event_time
from app.models import Follow, WecomApp

# A day late, an alert tells the member little their customer list does not, and a runner
# that was down for a week must not flood members with old news when it comes back.
ALERT_DEADLINE = timedelta(days=1)
DATE_ZONE = ZoneInfo("Asia/Shanghai")  # `{added_date}` is the date the customer saw

_NAMES = """
    SELECT (SELECT name FROM external_contacts WHERE corp_id = $1 AND external_userid = $2)
               AS customer,
           (SELECT name FROM members WHERE corp_id = $1 AND userid = $3) AS member
"""


@dataclass(frozen=True, slots=True)
class Departure:
    """The follow as the customer left it; all unknown when wecom-hub never saw the add."""

    state: str | None
    added_date: str | None  # YYYY-MM-DD in DATE_ZONE
    tag_ids: list[str]
    came_back: bool  # the follow is active again: this deletion was processed late


def choose_churn(
    rules: list[LoadedRule], *, state: str | None, user_id: str, tag_ids: Collection[str]
) -> LoadedRule | None:
    """The most specific matching rule; among equally specific ones, the highest priority."""
    matching = [
        r
        for r in rules
        if isinstance(r.match, ChurnMatch)
        and r.match.matches(state=state, user_id=user_id, tag_ids=tag_ids)
    ]
    return max(matching, key=lambda r: (r.match.specificity(), r.priority, -r.id), default=None)


async def _departure(session: AsyncSession, corp_id: str, event: ev.DelFollowUser) -> Departure:
    row = (
        await session.execute(
            select(Follow.status, Follow.state, Follow.added_at, Follow.tag_ids).where(
                Follow.corp_id == corp_id,
                Follow.userid == event.user_id,
                Follow.external_userid == event.external_user_id,
            )
        )
    ).one_or_none()
    if row is None:
        return Departure(None, None, [], came_back=False)
    added = row.added_at.astimezone(DATE_ZONE).date().isoformat() if row.added_at else None
    return Departure(
        row.state, added, list(row.tag_ids or []), came_back=row.status in ("active", "half")
    )


def _why_not(agent_id: int | None, departure: Departure) -> str | None:
    if agent_id is None:
        return "the app has no agent_id: message/send needs the app's AgentID"
    if departure.came_back:
        return "the customer added the member again before this deletion was processed"
    return None


async def alert_churn(
    session: AsyncSession, event: ev.DelFollowUser, context: Context, rules: RuleCache
) -> None:
    departure = await _departure(session, context.corp_id, event)
    chosen = choose_churn(
        await rules.get(session, "churn", context.app_id),
        state=departure.state,
        user_id=event.user_id,
        tag_ids=departure.tag_ids,
    )
    if chosen is None:
        return
    content: ChurnContent = chosen.content
    agent_id = await session.scalar(select(WecomApp.agent_id).where(WecomApp.id == context.app_id))
    at = event_time(event, context)
    churn = f"{context.corp_id}:{event.user_id}:{event.external_user_id}:{int(at.timestamp())}"
    await enqueue(
        session,
        kind=ActionKind.CHURN_ALERT,
        app_id=context.app_id,
        corp_id=context.corp_id,
        target=event.external_user_id,
        event_id=context.event_id,
        idempotency_key=f"{ActionKind.CHURN_ALERT}:{churn}",
        deadline=at + ALERT_DEADLINE,
        payload={
            "userid": event.user_id,
            "touser": list(dict.fromkeys([event.user_id, *content.notify])),
            "agentid": agent_id,
            "text": content.text,
            "state": departure.state,
            "added_date": departure.added_date,
            "rule_id": chosen.id,
            "rule_name": chosen.name,
        },
        skipped=_why_not(agent_id, departure),
    )


def _delivered(rule_name: str, answer: dict[str, Any]) -> str:
    """WeCom answers 0 even when some userids are unknown (`invaliduser`, `|`-separated):
    the alert succeeded, and the reason says who did not get it."""
    reason = f"rule {rule_name!r}; msgid {answer.get('msgid')}"
    if answer.get("invaliduser"):
        reason += f"; not delivered to invaliduser {answer['invaliduser']}"
    return reason


async def send_churn_alert(run: WecomRun) -> Outcome:
    """The action's handler. The member's userid stands in for a name wecom-hub does not
    know: whoever reads the alert knows whom it is about."""
    payload: dict[str, Any] = run.action.payload
    names = await run.db.fetchrow(_NAMES, run.corp_id, run.action.target, payload["userid"])
    customer, member = (names["customer"], names["member"]) if names else (None, None)
    text = render(
        payload["text"],
        {
            "customer_name": customer,
            "member_name": member or payload["userid"],
            "state": payload["state"],
            "added_date": payload["added_date"],
        },
        placeholders=CHURN_PLACEHOLDERS,
    )
    answer = await run.client.call(
        run.credentials,
        "POST",
        "message/send",
        json={
            "touser": "|".join(payload["touser"]),
            "msgtype": "text",
            "agentid": payload["agentid"],
            "text": {"content": text},
        },
        deadline=run.deadline_monotonic,
    )
    return Outcome(ActionStatus.SUCCEEDED, _delivered(payload["rule_name"], answer))
