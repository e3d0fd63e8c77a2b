"""Send the welcome message (PROTOCOL.md §5.2): the one side effect with a hard clock.

The welcome_code is valid 20 s and usable once. The action's deadline is the event's
CreateTime + 20 s; nothing is sent after it (the runner marks the action `expired`). WeCom's
answers: 41096, another app is delivering, may be tried again inside the window; 41051, the
welcome was delivered (or the customer started chatting), ends the action as `skipped`.
"""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.automations.media import attachments_on_the_wire
from app.automations.rules import WelcomeContent, render
from app.automations.triggers import WELCOME_CODE_SECONDS
from app.metrics import WELCOME_SECONDS
from app.wecom.errors import WecomApiError

RETRY_41096_SECONDS = 0.3
WELCOME_BACKOFF_SECONDS = 0.03  # -1 / 45009: soon (30, 60, 120 ms…), the window is 20 s
WELCOME_MAX_ATTEMPTS = 8  # the deadline stops it first
NAME_LOOKUP_SECONDS = 1.0  # at most this much of the window is spent learning the name
# A member's name, kept this long per process: a campaign welcomes hundreds of customers a
# second on behalf of a few members, and the lookup was a round trip per welcome. A renamed
# member shows in welcomes within this time.
MEMBER_NAME_SECONDS = 10.0
_member_names: dict[tuple[str, str], tuple[float, str | None]] = {}

_NAMES = """
    SELECT (SELECT name FROM external_contacts WHERE corp_id = $1 AND external_userid = $2)
               AS customer,
           (SELECT name FROM members WHERE corp_id = $1 AND userid = $3) AS member
"""


async def _names(run: WecomRun, content: WelcomeContent, user_id: str) -> dict[str, str | None]:
    """customer_name and member_name, only if the template uses them. The customer is new,
    so the name is usually not known yet: ask WeCom, briefly; on any trouble, the template's
    fallback wording is used instead of delaying the welcome."""
    if "{" not in content.text:
        return {}
    cached = _member_names.get((run.corp_id, user_id))
    if "{customer_name}" not in content.text and cached and cached[0] > time.monotonic():
        return {"customer_name": None, "member_name": cached[1]}
    known = await run.db.fetchrow(_NAMES, run.corp_id, run.action.target, user_id)
    customer, member = (known["customer"], known["member"]) if known else (None, None)
    if len(_member_names) > 10_000:  # bounded: members of every corp served
        _member_names.clear()
    _member_names[(run.corp_id, user_id)] = (time.monotonic() + MEMBER_NAME_SECONDS, member)
    if customer is None and "{customer_name}" in content.text:
        loop = asyncio.get_running_loop()
        budget = loop.time() + NAME_LOOKUP_SECONDS
        deadline = min(budget, run.deadline_monotonic or budget)
        try:
            body = await asyncio.wait_for(
                run.client.call(
                    run.credentials,
                    "GET",
                    "externalcontact/get",
                    params={"external_userid": run.action.target},
                    deadline=deadline,
                ),
                timeout=max(0.0, deadline - loop.time()),
            )
            customer = body["external_contact"].get("name")
        except (WecomApiError, TimeoutError):
            pass
    return {"customer_name": customer, "member_name": member}


async def send_welcome(run: WecomRun) -> Outcome:
    payload: dict[str, Any] = run.action.payload
    content = WelcomeContent.model_validate(payload["content"])
    request: dict[str, Any] = {"welcome_code": payload["welcome_code"]}
    if content.text:
        names = await _names(run, content, payload.get("user_id", ""))
        request["text"] = {"content": render(content.text, names)}
    left_out = ""
    if content.attachments:
        attachments, missing = await attachments_on_the_wire(run.db, run.corp_id, content)
        if missing:
            left_out = f"; left out, no fresh upload yet: {', '.join(missing)}"
        if attachments:
            request["attachments"] = attachments
    if "text" not in request and "attachments" not in request:
        return Outcome(ActionStatus.FAILED, "nothing to send" + left_out)
    loop = asyncio.get_running_loop()
    busy = False  # WeCom answered 41096: another app is delivering
    while True:
        try:
            await run.client.call(
                run.credentials,
                "POST",
                "externalcontact/send_welcome_msg",
                json=request,
                deadline=run.deadline_monotonic,
                backoff=WELCOME_BACKOFF_SECONDS,
                max_attempts=WELCOME_MAX_ATTEMPTS,
            )
            if run.action.deadline is not None:  # deadline = CreateTime + 20 s
                created = run.action.deadline - timedelta(seconds=WELCOME_CODE_SECONDS)
                WELCOME_SECONDS.observe((datetime.now(UTC) - created).total_seconds())
            return Outcome(ActionStatus.SUCCEEDED, f"rule {payload.get('rule_name')!r}{left_out}")
        except WecomApiError as exc:
            if exc.errcode == 41051:
                return Outcome(
                    ActionStatus.SKIPPED,
                    "41051: already delivered, or the customer started chatting first",
                )
            deadline = run.deadline_monotonic  # on the loop's clock
            if exc.errcode == 41096:
                busy = True
                if deadline is None or loop.time() + RETRY_41096_SECONDS < deadline:
                    await asyncio.sleep(RETRY_41096_SECONDS)  # another app is delivering
                    continue
            # No time left (the pause may have run past the deadline under load, and the
            # next call been refused for it): the deadline ended it, as a -1 would.
            if exc.errcode == 41096 or (busy and deadline is not None and loop.time() >= deadline):
                return Outcome(
                    ActionStatus.EXPIRED,
                    "deadline passed while WeCom answered 41096 (another app was delivering)",
                )
            raise
