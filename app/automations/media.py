"""Welcome attachments configured as files: kept, uploaded ahead, refreshed, never uploaded
inside a welcome's 20 seconds.

A rule is saved with `{"msgtype": "image", "file": "/srv/poster.png"}`: the file is read
then, checked against WeCom's limits, and kept in Postgres (`media_files`, named by its
sha256), so any replica can upload it. WeCom's temporary media lives 3 days, per corp:
every runner, once a minute, enqueues an `upload_media` action for each file and corp
whose upload is missing or has less than a day left. The welcome only looks up the
current media_id; an attachment without a fresh one is left out, and the action says so.
"""

import asyncio
import contextlib
import hashlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.rules import MediaAttachment, Miniprogram, WelcomeContent
from app.models import MediaFile

log = logging.getLogger(__name__)

UPLOAD_MEDIA = "upload_media"
SCHEDULE_SECONDS = 60.0
LIFETIME = timedelta(days=3)  # a media_id's life at WeCom
REFRESH_AHEAD = timedelta(days=1)  # upload again when less than this is left
USABLE_MARGIN = timedelta(minutes=5)  # a media_id this close to its end is not used
# media/upload's limits (all files more than 5 bytes); a miniprogram cover is an image.
MAX_BYTES = {"image": 10 << 20, "video": 10 << 20, "file": 20 << 20}
SUFFIXES = {"image": (".jpg", ".jpeg", ".png"), "video": (".mp4",)}


def upload_kind(attachment: MediaAttachment) -> str:
    return "image" if isinstance(attachment, Miniprogram) else attachment.msgtype


def read_file(attachment: MediaAttachment) -> tuple[str, str, bytes]:
    """(kind, filename, content) of an attachment's file, or ValueError saying why not."""
    assert attachment.file is not None
    kind, path = upload_kind(attachment), Path(attachment.file)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{attachment.msgtype} file {path}: {exc.strerror}") from None
    if len(content) <= 5 or len(content) > MAX_BYTES[kind]:
        raise ValueError(
            f"{attachment.msgtype} file {path} is {len(content):,} bytes; WeCom takes "
            f"6 to {MAX_BYTES[kind]:,} for {kind}"
        )
    if kind in SUFFIXES and path.suffix.lower() not in SUFFIXES[kind]:
        raise ValueError(
            f"{attachment.msgtype} file {path}: WeCom takes {', '.join(SUFFIXES[kind])} only"
        )
    return kind, path.name, content


def has_files(content: WelcomeContent) -> bool:
    return any(isinstance(a, MediaAttachment) and a.sha256 for a in content.attachments)


async def keep_files(session: AsyncSession, content: WelcomeContent) -> WelcomeContent:
    """Read and keep every attachment file not kept yet; the content, with each such
    attachment naming its file by sha256 (and by name only, not by path)."""
    attachments = []
    for attachment in content.attachments:
        if isinstance(attachment, MediaAttachment) and attachment.file and not attachment.sha256:
            kind, filename, data = read_file(attachment)
            sha256 = hashlib.sha256(data).hexdigest()
            await session.execute(
                insert(MediaFile)
                .values(sha256=sha256, kind=kind, filename=filename, content=data)
                .on_conflict_do_nothing()
            )
            attachment = attachment.model_copy(update={"file": filename, "sha256": sha256})
        attachments.append(attachment)
    return content.model_copy(update={"attachments": attachments})


# One statement, safe to run from every replica at once, for the files that enabled rules
# use (a disabled or removed rule's files are left to expire): the idempotency key names the
# upload being replaced (and the hour), so each refresh is enqueued once, and an upload
# that failed for good is tried again the next hour.
SCHEDULE_UPLOADS = """
    WITH due AS (
        SELECT f.sha256, a.corp_id, min(a.id) AS app_id, u.media_id
        FROM media_files f
        CROSS JOIN apps a
        LEFT JOIN media_uploads u ON u.sha256 = f.sha256 AND u.corp_id = a.corp_id
        WHERE a.removed_at IS NULL
          AND f.sha256 IN (  -- files that an enabled welcome rule uses
              SELECT jsonb_array_elements(r.content -> 'attachments') ->> 'sha256'
              FROM rules r WHERE r.kind = 'welcome' AND r.enabled
          )
          AND (u.media_id IS NULL
               OR u.expires_at < now() + interval '1 day')  -- REFRESH_AHEAD
        GROUP BY f.sha256, a.corp_id, u.media_id
    ), inserted AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, payload, deadline)
        SELECT 'upload_media', app_id, corp_id, sha256,  -- UPLOAD_MEDIA
               'upload_media:' || corp_id || ':' || sha256 || ':'
                   || coalesce(media_id, 'first') || ':' || to_char(now(), 'YYYYMMDDHH24'),
               jsonb_build_object('sha256', sha256), now() + interval '1 hour'
        FROM due
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    )
    SELECT pg_notify('wecom_hub_actions', '') FROM inserted
"""


async def keep_uploads_fresh(db: asyncpg.Pool, stop: asyncio.Event, *, every: float) -> None:
    """Beside each action runner: enqueue the uploads that are due, once a minute."""
    while not stop.is_set():
        try:
            await db.execute(SCHEDULE_UPLOADS)
        except Exception as exc:  # Postgres away: the next round will do
            log.warning("media uploads not scheduled", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def schedule_uploads(session: AsyncSession) -> None:
    """In the caller's transaction: a rule saved with a file has its upload enqueued with it."""
    await session.execute(text(SCHEDULE_UPLOADS))


_FRESH = """
    SELECT sha256, media_id FROM media_uploads
    WHERE corp_id = $1 AND sha256 = any($2::text[]) AND expires_at > now() + $3::interval
"""


async def attachments_on_the_wire(
    db: asyncpg.Pool, corp_id: str, content: WelcomeContent
) -> tuple[list[dict[str, Any]], list[str]]:
    """send_welcome_msg's attachments, with each file's current media_id; and the names of
    the files left out because no fresh upload of them exists (yet)."""
    files = [a.sha256 for a in content.attachments if isinstance(a, MediaAttachment) and a.sha256]
    fresh: dict[str, str] = {}
    if files:
        rows = await db.fetch(_FRESH, corp_id, files, USABLE_MARGIN)
        fresh = {r["sha256"]: r["media_id"] for r in rows}
    wire, missing = [], []
    for attachment in content.attachments:
        fields = attachment.model_dump(exclude={"msgtype", "file", "sha256"}, exclude_none=True)
        if isinstance(attachment, MediaAttachment) and attachment.sha256:
            media_id = fresh.get(attachment.sha256)
            if media_id is None:
                missing.append(attachment.file or attachment.sha256)
                continue
            fields["pic_media_id" if isinstance(attachment, Miniprogram) else "media_id"] = media_id
        if isinstance(attachment, Miniprogram):
            fields.pop("media_id", None)
        wire.append({"msgtype": attachment.msgtype, attachment.msgtype: fields})
    return wire, missing
