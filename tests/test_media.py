"""Welcome attachments configured as files: kept when the rule is saved, uploaded as WeCom
temporary media before any customer comes, refreshed before the 3 days run out, and looked
up (never uploaded) inside the welcome's 20 seconds."""

from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.automations.media import SCHEDULE_UPLOADS
from app.automations.store import RuleInvalid
from app.config import Settings
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import wait_for
from tests.test_automations import action_of, finished, new_customer, rule, welcomes

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
    await rule(
        settings,
        "welcome",
        {"state": "expo"},
        {
            "text": "欢迎来到展会",
            "attachments": [
                {"msgtype": "image", "file": str(path["poster.png"])},
                {"msgtype": "video", "file": str(path["promo.mp4"])},
                {"msgtype": "file", "file": str(path["价目表.pdf"])},
                {
                    "msgtype": "miniprogram",
                    "title": "下单",
                    "appid": "wxabc",
                    "page": "/i",
                    "file": str(path["cover.jpg"]),
                },
            ],
        },
    )

    async def all_uploaded() -> bool:
        return len(await uploads(db)) == 4

    await wait_for(all_uploaded)  # before any customer: the rule's saving enqueued them
    first = await uploads(db)
    customer = await new_customer(live, wecom_app, simulator, "expo")
    await finished(db, "welcome", customer)
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
    await finished(db, "welcome", second)
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
    path = files(tmp_path)
    await rule(
        settings,
        "welcome",
        {},
        {
            "text": "你好",
            "attachments": [
                {"msgtype": "link", "title": "官网", "url": "https://example.com"},
                {"msgtype": "image", "file": str(path["poster.png"])},
            ],
        },
    )

    async def uploaded() -> bool:
        return len(await uploads(db)) == 1

    await wait_for(uploaded)
    await db.execute("UPDATE media_uploads SET expires_at = now() + interval '1 minute'")
    customer = await new_customer(live, wecom_app, simulator, "any")
    await finished(db, "welcome", customer)
    [sent] = welcomes(simulator)
    assert [a["msgtype"] for a in sent["attachments"]] == ["link"]
    done = await action_of(db, "welcome", customer)
    assert done is not None and done["status"] == "succeeded"
    assert done["reason"].endswith("left out, no fresh upload yet: poster.png")


@pytest.mark.parametrize(
    ("attachment", "problem"),
    [
        ({"msgtype": "image", "file": "/nonexistent/poster.png"}, "No such file"),
        ({"msgtype": "image", "file": "{dir}/tiny.png"}, "is 5 bytes; WeCom takes 6 to"),
        ({"msgtype": "image", "file": "{dir}/anim.gif"}, "WeCom takes .jpg, .jpeg, .png only"),
        ({"msgtype": "video", "file": "{dir}/poster.png"}, "WeCom takes .mp4 only"),
        ({"msgtype": "file"}, "file needs media_id or file"),
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
    if "file" in attachment:
        attachment = attachment | {"file": attachment["file"].format(dir=tmp_path)}
    with pytest.raises(RuleInvalid) as refused:
        await rule(settings, "welcome", {}, {"text": "hi", "attachments": [attachment]})
    assert problem in str(refused.value)
    assert await db.fetchval("SELECT count(*) FROM media_files") == 0
    assert await db.fetchval("SELECT count(*) FROM actions") == 0
