"""The upload_media action (app/automations/media.py schedules it): upload a kept file as
WeCom temporary media (media/upload) and keep the new media_id and when it ends."""

from datetime import UTC, datetime

from app.actions.kinds import ActionStatus
from app.actions.runner import Outcome
from app.actions.wecom import WecomRun
from app.automations.media import LIFETIME

_FILE = "SELECT kind, filename, content FROM media_files WHERE sha256 = $1"
_SAVE_UPLOAD = """
    INSERT INTO media_uploads (corp_id, sha256, media_id, uploaded_at, expires_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (corp_id, sha256) DO UPDATE SET
        media_id = excluded.media_id, uploaded_at = excluded.uploaded_at,
        expires_at = excluded.expires_at
"""


async def upload_media(run: WecomRun) -> Outcome:
    """The action: upload the file as temporary media, keep the new media_id."""
    sha256 = run.action.target
    kept = await run.db.fetchrow(_FILE, sha256)
    if kept is None:
        return Outcome(ActionStatus.SKIPPED, "the file is no longer kept")
    body = await run.client.call(
        run.credentials,
        "POST",
        "media/upload",
        params={"type": kept["kind"]},
        media=(kept["filename"], kept["content"]),
        deadline=run.deadline_monotonic,
    )
    created = datetime.fromtimestamp(int(body.get("created_at") or 0), UTC)
    uploaded_at = created if created.year > 2000 else datetime.now(UTC)
    await run.db.execute(
        _SAVE_UPLOAD,
        run.corp_id,
        sha256,
        body["media_id"],
        uploaded_at,
        uploaded_at + LIFETIME,
    )
    return Outcome(ActionStatus.SUCCEEDED, f"{kept['filename']} is {body['media_id']}")
