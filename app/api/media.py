"""/api/v1/media: attachment files for welcome rules, uploaded (multipart), checked against
WeCom's limits and kept; a rule names one by its id (the file's SHA-256) as `sha256`. The
server's own disk is never read over HTTP."""

from typing import Annotated, Literal

from fastapi import APIRouter, Form, UploadFile

from app.api.deps import HubDep, WriteKey
from app.api.schemas.media import MediaOut
from app.automations.media import MAX_BYTES, keep_file
from app.errors import FieldError, Invalid

router = APIRouter(prefix="/media", tags=["media"])


@router.post("", status_code=201, response_model=MediaOut)
async def upload(
    file: UploadFile,
    kind: Annotated[Literal["image", "video", "file"], Form(description="WeCom's media type.")],
    _: WriteKey,
    hub: HubDep,
) -> MediaOut:
    """image: jpg or png up to 10 MB; video: mp4 up to 10 MB; file: up to 20 MB. Uploading
    the same content twice answers the same id."""
    data = await file.read(MAX_BYTES[kind] + 1)  # never more than WeCom would take, plus one
    try:
        async with hub.sessionmaker.begin() as session:
            kept = await keep_file(session, kind, file.filename or "file", data)
    except ValueError as exc:
        raise Invalid([FieldError("file", str(exc))]) from None
    return MediaOut(id=kept.sha256, kind=kept.kind, filename=kept.filename, size=kept.size)
