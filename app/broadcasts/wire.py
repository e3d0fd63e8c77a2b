"""A broadcast's content as add_msg_template takes it, and WeCom's paged reads.

Attachment files are kept by sha256 (POST /api/v1/media) and uploaded as WeCom temporary
media (3 days) when a task is made: a broadcast is not a welcome with 20 seconds to live,
so a missing or stale upload is simply made then, not left out."""

from collections.abc import AsyncIterator
from typing import Any

from app.actions.errors import ActionError
from app.actions.wecom import WecomRun
from app.automations.media import attachments_on_the_wire
from app.automations.rules import MediaAttachment, WelcomeContent
from app.automations.uploads import upload
from app.broadcasts.spec import BroadcastContent
from app.wecom.client import Credentials, WecomClient

MAX_PAGES = 1000  # a cursor that never ends is WeCom's bug, not a reason to loop for ever


async def message(run: WecomRun, content: BroadcastContent) -> dict[str, Any]:
    """`text` and `attachments` of add_msg_template, each file with a fresh media_id."""
    body: dict[str, Any] = {}
    if content.text:
        body["text"] = {"content": content.text}
    if content.attachments:
        # The welcome's conversion, whose checks (text length, placeholders) do not apply:
        # only its attachments are used.
        carrier = WelcomeContent(attachments=content.attachments)
        wire, missing = await attachments_on_the_wire(run.db, run.corp_id, carrier)
        if missing:
            for attachment in content.attachments:
                if isinstance(attachment, MediaAttachment) and attachment.sha256:
                    if await upload(run, attachment.sha256) is None:
                        raise ActionError(
                            "media_missing",
                            f"file {attachment.sha256} is no longer kept",
                            retryable=False,
                        )
            wire, missing = await attachments_on_the_wire(run.db, run.corp_id, carrier)
        if missing:
            raise ActionError("media_missing", f"no upload of {', '.join(missing)}", retryable=True)
        body["attachments"] = wire
    return body


async def pages(
    client: WecomClient,
    credentials: Credentials,
    api: str,
    body: dict[str, Any],
    key: str,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Each page's `key` list of a cursor-paged read (get_groupmsg_*)."""
    cursor = ""
    for _ in range(MAX_PAGES):
        answer = await client.call(
            credentials, "POST", f"externalcontact/{api}", json={**body, "cursor": cursor}
        )
        yield list(answer.get(key) or [])
        cursor = str(answer.get("next_cursor") or "")
        if not cursor:
            return
