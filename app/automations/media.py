"""Welcome attachments configured as files: kept, uploaded ahead, refreshed, never uploaded
inside a welcome's 20 seconds.

A rule is saved with `{"msgtype": "image", "file": "/srv/poster.png"}`: the file is read
then, checked against WeCom's limits, and kept in Postgres (`media_files`, named by its
sha256), so any replica can upload it. WeCom's temporary media lives 3 days, per corp:
every runner, once a minute, enqueues an `upload_media` action for each file and corp
whose upload is missing or has less than a day left. The welcome only looks up the
current media_id; an attachment without a fresh one is left out, and the action says so.
"""

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.automations.rules import MediaAttachment, Miniprogram, WelcomeContent
from app.models import MediaFile
from app.notify import ACTIONS_CHANNEL

log = logging.getLogger(__name__)

LIFETIME = timedelta(days=3)  # a media_id's life at WeCom
REFRESH_AHEAD = timedelta(days=1)  # upload again when less than this is left
USABLE_MARGIN = timedelta(minutes=5)  # a media_id this close to its end is not used
# media/upload's limits (all files more than 5 bytes); a miniprogram cover is an image.
MAX_BYTES = {"image": 10 << 20, "video": 10 << 20, "file": 20 << 20}
SUFFIXES = {"image": (".jpg", ".jpeg", ".png"), "video": (".mp4",)}


def upload_kind(attachment: MediaAttachment) -> str:
    return "image" if isinstance(attachment, Miniprogram) else attachment.msgtype


@dataclass(frozen=True, slots=True)
class KeptFile:
    """A file kept for attachments; rules name it by its sha256 (its id in the API)."""

    sha256: str
    kind: str
    filename: str
    size: int


class AttachmentRefused(ValueError):
    """An attachment's file cannot be kept: which attachment, and why."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def check_name(kind: str, filename: str, what: str) -> None:
    """WeCom's formats by file name: image jpg/png, video mp4; a file anything."""
    if kind in SUFFIXES and Path(filename).suffix.lower() not in SUFFIXES[kind]:
        raise ValueError(f"{what}: WeCom takes {', '.join(SUFFIXES[kind])} only")


def check_size(kind: str, size: int, what: str) -> None:
    limit = MAX_BYTES[kind]
    if not 5 < size <= limit:
        raise ValueError(f"{what} is {size:,} bytes; WeCom takes 6 to {limit:,} bytes for {kind}")


async def keep_file(session: AsyncSession, kind: str, filename: str, data: bytes) -> KeptFile:
    """Keep a file (an upload over the API, or one read from the media folder): checked
    against WeCom's limits (ValueError saying which), stored once per content."""
    what = f"{kind} file {filename}"
    check_name(kind, filename, what)
    check_size(kind, len(data), what)
    sha256 = hashlib.sha256(data).hexdigest()
    await session.execute(
        insert(MediaFile)
        .values(sha256=sha256, kind=kind, filename=filename, content=data)
        .on_conflict_do_nothing()
    )
    return KeptFile(sha256, kind, filename, len(data))


def read_file(attachment: MediaAttachment, media_dir: Path | None) -> tuple[str, str, bytes]:
    """(kind, filename, content) of an attachment's file, or ValueError saying why not.

    Whoever saves a rule names a file, and its content goes to WeCom: so only a regular file
    inside `media_dir` is read (a relative name is taken inside it), never what the process
    merely can read (its secret key, /proc, /dev/zero), and never more than WeCom takes."""
    assert attachment.file is not None
    kind, what = upload_kind(attachment), f"{attachment.msgtype} file {attachment.file}"
    name = Path(attachment.file).name  # what WeCom is told, so what its suffix is checked on
    check_name(kind, name, what)
    return kind, name, _read_at_most(_inside(media_dir, attachment.file, what), kind, what)


def _inside(media_dir: Path | None, file: str, what: str) -> Path:
    """The file's real path, with `..` and every symlink resolved, if it is in media_dir."""
    if media_dir is None:
        raise ValueError(f"{what}: rules cannot name files until WECOM_HUB_MEDIA_DIR is set")
    try:
        root = media_dir.resolve(strict=True)
    except OSError as exc:
        raise ValueError(f"{what}: WECOM_HUB_MEDIA_DIR {media_dir}: {exc.strerror}") from None
    try:
        path = (root / file).resolve()
    except (OSError, RuntimeError):  # only a symlink loop (RuntimeError before Python 3.13)
        raise ValueError(f"{what}: its symlinks make a loop") from None
    if not path.is_relative_to(root):
        raise ValueError(f"{what} is outside WECOM_HUB_MEDIA_DIR ({root})")
    return path


def _read_at_most(path: Path, kind: str, what: str) -> bytes:
    """The content of a regular file of WeCom's size for `kind`. The size is checked before
    a byte is read, and no more than the limit + 1 bytes are read, so a file that grows
    meanwhile is refused too, not read into memory."""
    limit = MAX_BYTES[kind]
    try:
        # NONBLOCK: opening a fifo does not wait for a writer. NOFOLLOW: a symlink put in
        # place of the resolved path since is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"{what}: {exc.strerror}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{what} is not a regular file")
        check_size(kind, status.st_size, what)
        with os.fdopen(fd, "rb", closefd=False) as opened:
            content = opened.read(limit + 1)
    finally:
        os.close(fd)
    check_size(kind, len(content), f"{what}, changed while it was read,")
    return content


def has_files(content: WelcomeContent) -> bool:
    return any(isinstance(a, MediaAttachment) and a.sha256 for a in content.attachments)


async def keep_files(
    session: AsyncSession,
    content: WelcomeContent,
    *,
    media_dir: Path | None = None,
    paths: bool = True,
) -> WelcomeContent:
    """The content with each attachment file kept and named by its sha256 (and by name
    only, not by path). A `file` is read from `media_dir` only (settings.media_dir; None
    refuses every file); `paths=False` (a rule saved over HTTP) refuses every path: such a
    rule names files uploaded before (POST /api/v1/media) by their sha256."""
    attachments = []
    for i, attachment in enumerate(content.attachments):
        if isinstance(attachment, MediaAttachment) and attachment.sha256 and not attachment.file:
            # an uploaded file, named by its id: shown by the name it was uploaded with
            filename = await session.scalar(
                select(MediaFile.filename).where(MediaFile.sha256 == attachment.sha256)
            )
            attachment = attachment.model_copy(update={"file": filename})
        elif isinstance(attachment, MediaAttachment) and attachment.file and not attachment.sha256:
            if not paths:
                raise AttachmentRefused(
                    i,
                    "over the API a rule cannot name a path on the server; upload the file"
                    " with POST /api/v1/media and give its id as `sha256`",
                )
            try:
                kind, filename, data = read_file(attachment, media_dir)
                kept_file = await keep_file(session, kind, filename, data)
            except ValueError as exc:
                raise AttachmentRefused(i, str(exc)) from None
            attachment = attachment.model_copy(
                update={"file": filename, "sha256": kept_file.sha256}
            )
        attachments.append(attachment)
    return content.model_copy(update={"attachments": attachments})


# One statement, safe to run from every replica at once, for the files that enabled rules
# use, to the corps those rules apply to (a disabled or removed rule's files are left to
# expire): the idempotency key names the
# upload being replaced (and the hour), so each refresh is enqueued once, and an upload
# that failed for good is tried again the next hour.
SCHEDULE_UPLOADS = f"""
    WITH due AS (
        SELECT f.sha256, a.corp_id, min(a.id) AS app_id, u.media_id
        FROM media_files f
        CROSS JOIN apps a
        LEFT JOIN media_uploads u ON u.sha256 = f.sha256 AND u.corp_id = a.corp_id
        WHERE a.removed_at IS NULL
          AND EXISTS (  -- an enabled welcome rule of this corp (or of every app) uses it
              SELECT FROM rules r
              JOIN LATERAL jsonb_array_elements(r.content -> 'attachments') AS att ON true
              WHERE r.kind = 'welcome' AND r.enabled AND att ->> 'sha256' = f.sha256
                AND (r.app_id IS NULL
                     OR r.app_id IN (SELECT id FROM apps WHERE corp_id = a.corp_id))
          )
          AND (u.media_id IS NULL
               OR u.expires_at < now() + interval '1 day')  -- REFRESH_AHEAD
        GROUP BY f.sha256, a.corp_id, u.media_id
    ), inserted AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, payload, deadline)
        SELECT 'upload_media', app_id, corp_id, sha256,  -- ActionKind.UPLOAD_MEDIA
               'upload_media:' || corp_id || ':' || sha256 || ':'
                   || coalesce(media_id, 'first') || ':' || to_char(now(), 'YYYYMMDDHH24'),
               jsonb_build_object('sha256', sha256), now() + interval '1 hour'
        FROM due
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    )
    SELECT pg_notify('{ACTIONS_CHANNEL}', '') FROM inserted
"""  # noqa: S608 - a constant


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
