"""Welcome attachments configured as files: kept when the rule is saved, uploaded as WeCom
temporary media before any customer comes, refreshed before the 3 days run out, and looked
up (never uploaded) inside the welcome's 20 seconds. Only regular files inside
WECOM_HUB_MEDIA_DIR, of a size WeCom takes, are ever read."""

import os
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.automations.media import MAX_BYTES, SCHEDULE_UPLOADS, read_file
from app.automations.rules import File, Image, MediaAttachment, Video
from app.automations.store import RuleSpec, create_rule
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.errors import Invalid
from tests.conftest import RegisteredApp, Simulator, random_app, register
from tests.processing_helpers import settled, wait_for
from tests.test_automations import action_of, new_customer, welcomes

PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "poster.png": PNG,
        "promo.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(300),
        "价目表.pdf": b"%PDF-1.4" + bytes(400),
        "cover.jpg": b"\xff\xd8\xff\xe0" + bytes(100),
    }
    for name, content in made.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in made}


async def welcome_rule(
    settings: Settings,
    match: dict[str, Any],
    content: dict[str, Any],
    *,
    media_dir: Path | None,
) -> None:
    """Save a welcome rule as `rules add` and the API do, its files read from media_dir."""
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            spec = RuleSpec(kind="welcome", name="welcome", match=match, content=content)
            await create_rule(session, spec, media_dir=media_dir)
    finally:
        await engine.dispose()


async def uploads(db: asyncpg.Connection) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT f.filename, u.media_id FROM media_uploads u JOIN media_files f USING (sha256)"
    )
    return {r["filename"]: r["media_id"] for r in rows}


async def test_attachment_files_are_uploaded_ahead_and_refreshed_before_they_expire(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    path = files(tmp_path)
    await welcome_rule(
        settings,
        {"state": "expo"},
        {
            "text": "欢迎来到展会",
            "attachments": [
                {"msgtype": "image", "file": str(path["poster.png"])},  # absolute, inside
                {"msgtype": "video", "file": "promo.mp4"},  # relative to the media dir
                {"msgtype": "file", "file": str(path["价目表.pdf"])},
                {
                    "msgtype": "miniprogram",
                    "title": "下单",
                    "appid": "wxabc",
                    "page": "/i",
                    "file": "cover.jpg",
                },
            ],
        },
        media_dir=tmp_path,
    )

    async def all_uploaded() -> bool:
        return len(await uploads(db)) == 4

    await wait_for(all_uploaded)  # before any customer: the rule's saving enqueued them
    first = await uploads(db)
    customer = await new_customer(live, wecom_app, simulator, "expo")
    await settled(db, "welcome", customer)
    [sent] = welcomes(simulator)  # the simulator refuses unknown or expired media (40007)
    wire = {a["msgtype"]: a[a["msgtype"]] for a in sent["attachments"]}
    assert wire["image"] == {"media_id": first["poster.png"]}
    assert wire["video"] == {"media_id": first["promo.mp4"]}
    assert wire["file"] == {"media_id": first["价目表.pdf"]}
    assert wire["miniprogram"] == {
        "title": "下单", "appid": "wxabc", "page": "/i", "pic_media_id": first["cover.jpg"]
    }  # fmt: skip
    uploaded = [c.body for c in simulator.state.calls if c.api == "media/upload"]
    assert sorted(c["media"]["filename"] for c in uploaded) == sorted(first)

    # Two and a half days later the poster's upload has half a day left: the next round of
    # scheduling (every runner runs it each minute) uploads it again; the rest stay.
    await db.execute(
        "UPDATE media_uploads SET expires_at = now() + interval '12 hours'"
        " WHERE sha256 = (SELECT sha256 FROM media_files WHERE filename = 'poster.png')"
    )
    await db.execute(SCHEDULE_UPLOADS)
    await db.execute(SCHEDULE_UPLOADS)  # another replica, the same minute: nothing more

    async def poster_renewed() -> bool:
        return (await uploads(db))["poster.png"] != first["poster.png"]

    await wait_for(poster_renewed)
    renewed = await uploads(db)
    assert {k: v for k, v in renewed.items() if k != "poster.png"} == {
        k: v for k, v in first.items() if k != "poster.png"
    }
    assert len([c for c in simulator.state.calls if c.api == "media/upload"]) == 5
    second = await new_customer(live, wecom_app, simulator, "expo")
    await settled(db, "welcome", second)
    images = [a["image"]["media_id"] for w in welcomes(simulator) for a in w["attachments"]
              if a["msgtype"] == "image"]  # fmt: skip
    assert images == [first["poster.png"], renewed["poster.png"]]

    # A rule switched off: its files are no longer kept fresh.
    await db.execute("UPDATE rules SET enabled = false")
    await db.execute("UPDATE media_uploads SET expires_at = now() + interval '1 hour'")
    count = "SELECT count(*) FROM actions WHERE kind = 'upload_media'"
    before = await db.fetchval(count)
    await db.execute(SCHEDULE_UPLOADS)
    assert await db.fetchval(count) == before == 5


async def test_a_welcome_leaves_out_a_file_with_no_fresh_upload_and_says_so(
    live: httpx.AsyncClient,
    settings: Settings,
    simulator: Simulator,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    files(tmp_path)
    await welcome_rule(
        settings,
        {},
        {
            "text": "你好",
            "attachments": [
                {"msgtype": "link", "title": "官网", "url": "https://example.com"},
                {"msgtype": "image", "file": "poster.png"},
            ],
        },
        media_dir=tmp_path,
    )

    async def uploaded() -> bool:
        return len(await uploads(db)) == 1

    await wait_for(uploaded)
    await db.execute("UPDATE media_uploads SET expires_at = now() + interval '1 minute'")
    customer = await new_customer(live, wecom_app, simulator, "any")
    await settled(db, "welcome", customer)
    [sent] = welcomes(simulator)
    assert [a["msgtype"] for a in sent["attachments"]] == ["link"]
    done = await action_of(db, "welcome", customer)
    assert done is not None and done["status"] == "succeeded"
    assert done["reason"].endswith("left out, no fresh upload yet: poster.png")


@pytest.mark.parametrize(
    ("attachment", "problem"),
    [
        ({"msgtype": "image", "file": "missing.png"}, "No such file"),
        ({"msgtype": "image", "file": "tiny.png"}, "is 5 bytes; WeCom takes 6 to"),
        ({"msgtype": "image", "file": "anim.gif"}, "WeCom takes .jpg, .jpeg, .png only"),
        ({"msgtype": "video", "file": "poster.png"}, "WeCom takes .mp4 only"),
        ({"msgtype": "image", "file": "/etc/hostname.png"}, "is outside WECOM_HUB_MEDIA_DIR"),
        ({"msgtype": "file"}, "file needs media_id, file or sha256"),
    ],
)
async def test_attachment_files_are_checked_when_the_rule_is_saved(
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
    attachment: dict[str, Any],
    problem: str,
) -> None:
    files(tmp_path)
    (tmp_path / "tiny.png").write_bytes(b"12345")
    (tmp_path / "anim.gif").write_bytes(PNG)
    with pytest.raises(Invalid) as refused:
        await welcome_rule(
            settings, {}, {"text": "hi", "attachments": [attachment]}, media_dir=tmp_path
        )
    assert problem in str(refused.value)
    assert await db.fetchval("SELECT count(*) FROM media_files") == 0
    assert await db.fetchval("SELECT count(*) FROM actions") == 0


async def test_without_a_media_dir_no_rule_can_name_a_file(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = files(tmp_path)
    content = {"text": "hi", "attachments": [{"msgtype": "image", "file": str(path["poster.png"])}]}
    with pytest.raises(Invalid) as refused:
        await welcome_rule(settings, {}, content, media_dir=None)
    [said] = refused.value.errors
    assert said.field == "content.attachments.0.file"
    assert said.message.endswith("rules cannot name files until WECOM_HUB_MEDIA_DIR is set")
    assert await db.fetchval("SELECT count(*) FROM media_files") == 0


# What the file an attachment names may be, read without a database ----------------------


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    """tmp_path/media, with a poster in it, beside a secret that must never be read."""
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "poster.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(b"the server's secret key")
    return tmp_path / "media"


def test_a_file_inside_the_media_dir_is_read_by_any_name_that_leads_there(
    media_dir: Path,
) -> None:
    (media_dir / "sub").mkdir()
    (media_dir / "sub" / "link.png").symlink_to(media_dir / "poster.png")
    for name in ("poster.png", str(media_dir / "poster.png"), "sub/../poster.png", "sub/link.png"):
        kind, filename, content = read_file(Image(file=name), media_dir)
        assert (kind, content) == ("image", PNG)
        assert filename == Path(name).name  # WeCom is told the name given, never the path


@pytest.mark.parametrize("name", ["../secret.png", "{tmp}/secret.png", "/dev/zero", "/proc/1"])
def test_a_path_leading_out_of_the_media_dir_is_refused(
    media_dir: Path, tmp_path: Path, name: str
) -> None:
    attachment = File(file=name.format(tmp=tmp_path))
    with pytest.raises(ValueError, match=r"is outside WECOM_HUB_MEDIA_DIR \(.*/media\)$"):
        read_file(attachment, media_dir)


def test_a_symlink_leading_out_of_the_media_dir_is_refused(media_dir: Path, tmp_path: Path) -> None:
    (media_dir / "innocent.png").symlink_to(tmp_path / "secret.png")
    (media_dir / "folder").symlink_to(tmp_path)
    for name in ("innocent.png", "folder/secret.png"):
        with pytest.raises(ValueError, match="is outside WECOM_HUB_MEDIA_DIR"):
            read_file(Image(file=name), media_dir)


def test_without_a_media_dir_nothing_is_read(media_dir: Path) -> None:
    with pytest.raises(ValueError, match="rules cannot name files until WECOM_HUB_MEDIA_DIR"):
        read_file(Image(file=str(media_dir / "poster.png")), None)


def test_a_media_dir_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"WECOM_HUB_MEDIA_DIR .*/gone: No such file"):
        read_file(Image(file="poster.png"), tmp_path / "gone")


@pytest.mark.timeout(10)  # opening a fifo for reading would wait for a writer forever
def test_what_is_not_a_regular_file_is_refused_without_waiting(media_dir: Path) -> None:
    (media_dir / "folder.png").mkdir()
    os.mkfifo(media_dir / "pipe.png")
    for attachment, folder in [
        (Image(file="folder.png"), media_dir),
        (Image(file="pipe.png"), media_dir),
        (File(file="zero"), Path("/dev")),  # endless: only its size would stop a reader
    ]:
        with pytest.raises(ValueError, match=r"is not a regular file$"):
            read_file(attachment, folder)


@pytest.mark.parametrize(
    ("attachment", "size"),
    [
        (Video(file="huge.mp4"), MAX_BYTES["video"] + 1),
        (File(file="huge.bin"), 1 << 40),  # a terabyte, sparse: reading it would never end
    ],
)
def test_a_file_too_large_for_wecom_is_refused_before_it_is_read(
    media_dir: Path, attachment: MediaAttachment, size: int
) -> None:
    assert attachment.file is not None
    with (media_dir / attachment.file).open("wb") as sparse:
        sparse.truncate(size)
    with pytest.raises(ValueError, match=f"is {size:,} bytes; WeCom takes 6 to"):
        read_file(attachment, media_dir)


def test_a_file_that_grows_after_its_size_was_checked_is_read_no_further_and_refused(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race, made certain: fstat still reports the size the file had when it was
    checked, while the file has grown well past WeCom's limit since."""
    with (media_dir / "growing.mp4").open("wb") as growing:
        growing.truncate(MAX_BYTES["video"] * 3)
    real_fstat = os.fstat

    def checked_earlier(fd: int) -> os.stat_result:
        status = real_fstat(fd)
        return os.stat_result((*status[:6], 1000, *status[7:]))

    monkeypatch.setattr(os, "fstat", checked_earlier)
    with pytest.raises(ValueError, match="changed while it was read, is 10,485,761 bytes"):
        read_file(Video(file="growing.mp4"), media_dir)


async def test_an_app_scoped_rules_files_go_to_its_corp_only(
    settings: Settings,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    media_dir: Path,
) -> None:
    other = random_app("other")
    await register(settings, other)
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            spec = RuleSpec(
                kind="welcome",
                name="poster for demo",
                app=wecom_app.slug,
                match={},
                content={"attachments": [{"msgtype": "image", "file": "poster.png"}]},
            )
            await create_rule(session, spec, media_dir=media_dir)
    finally:
        await engine.dispose()
    corps = await db.fetch("SELECT DISTINCT corp_id FROM actions WHERE kind = 'upload_media'")
    assert [r["corp_id"] for r in corps] == [wecom_app.corp_id]
