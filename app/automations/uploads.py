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
    uploaded = await upload(run, run.action.target)
    if uploaded is None:
        return Outcome(ActionStatus.SKIPPED, "the file is no longer kept")
    filename, media_id = uploaded
    return Outcome(ActionStatus.SUCCEEDED, f"{filename} is {media_id}")


async def upload(run: WecomRun, sha256: str) -> tuple[str, str] | None:
    """Upload a kept file as the run's corp's temporary media and keep its media_id (the
    upload_media action, and a broadcast task whose upload is missing or stale). The
    file's name and the new media_id; None if the file is no longer kept."""
    kept = await run.db.fetchrow(_FILE, sha256)
    if kept is None:
        return None
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
    return str(kept["filename"]), str(body["media_id"])
