"""`wecom-hub sync`: import what existed before wecom-hub was installed, resumably.

Tags, then every customer of every member with customer-contact permission
(get_follow_user_list, then batch/get_by_user in pages of 100), then every customer group
(groupchat/list, then groupchat/get), then every 「联系我」 way as a channel (list_contact_way
over 90-day windows from 2021-07-10, the oldest it lists, then get_contact_way each; join
ways cannot be listed). Each page is written in one transaction together with
the position reached, so an interrupted sync resumes where it stopped, and a page done twice
changes nothing (the same upserts as enrichment). Live events may arrive meanwhile: sync
fills in details and relations that predate us, it never overrides what an event decided.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.channels import wecom as ways
from app.channels.service import import_contact_ways
from app.models import SyncRun
from app.processing.enrichment import apply_contacts, apply_follows, apply_group, apply_tags
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError

MEMBERS_PER_BATCH = 100  # batch/get_by_user takes at most 100 userids
PAGE_LIMIT = 100  # and returns at most 100 per page
GROUPS_PER_PAGE = 100
# list_contact_way lists no way made before 2021-07-10 (Beijing time); a day earlier is safe.
WAYS_SINCE = 1_625_760_000  # 2021-07-09 00:00 UTC
WAYS_WINDOW_SECONDS = 90 * 86_400

Progress = Callable[[str, int], None]  # (phase, items done in this step)


class SyncBusy(Exception):
    """Another `sync` of the same app is running (here or on another machine)."""


@dataclass
class Summary:
    run_id: int
    resumed: bool
    counts: dict[str, int] = field(default_factory=dict)


class Sync:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: WecomClient,
        credentials: Credentials,
        *,
        progress: Progress = lambda phase, done: None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._client = client
        self._credentials = credentials
        self._corp_id = credentials.corp_id
        self._progress = progress

    async def run(self) -> Summary:
        """One sync per app at a time: a session advisory lock, held on a connection of its
        own for the whole run and released if the process dies, so that two runs never
        resume the same position and write over each other's progress."""
        assert self._credentials.app_id is not None
        lock = func.hashtext(f"sync:{self._credentials.app_id}")
        engine: AsyncEngine = self._sessionmaker.kw["bind"]
        async with engine.connect() as connection:
            holder = await connection.execution_options(isolation_level="AUTOCOMMIT")
            if not await holder.scalar(select(func.pg_try_advisory_lock(lock))):
                raise SyncBusy(f"a sync of app {self._credentials.app_id} is already running")
            try:
                return await self._run()
            finally:
                await holder.execute(select(func.pg_advisory_unlock(lock)))

    async def _run(self) -> Summary:
        run, resumed = await self._start()
        position: dict[str, Any] = dict(run.position)
        counts: dict[str, int] = dict(run.counts)
        try:
            if not position.get("tags_done"):
                await self._tags(run.id, position, counts)
            if "members" not in position:
                body = await self._call("GET", "externalcontact/get_follow_user_list")
                position["members"] = list(body.get("follow_user", []))
                await self._save(run.id, position, counts)
            await self._customers(run.id, position, counts)
            await self._groups(run.id, position, counts)
            await self._contact_ways(run.id, position, counts)
        except Exception as exc:
            async with self._sessionmaker.begin() as session:
                saved = await session.get(SyncRun, run.id)
                assert saved is not None
                saved.error = f"{type(exc).__name__}: {exc}"[:1000]
            raise
        async with self._sessionmaker.begin() as session:
            saved = await session.get(SyncRun, run.id)
            assert saved is not None
            saved.status, saved.finished_at, saved.error = "done", func.now(), None
        return Summary(run.id, resumed, counts)

    async def _start(self) -> tuple[SyncRun, bool]:
        """The unfinished run of this app if there is one (resume), else a new one."""
        assert self._credentials.app_id is not None
        async with self._sessionmaker.begin() as session:
            unfinished = await session.scalar(
                select(SyncRun)
                .where(SyncRun.app_id == self._credentials.app_id, SyncRun.status == "running")
                .order_by(SyncRun.id.desc())
                .with_for_update(skip_locked=True)
            )
            if unfinished is not None:
                return unfinished, True
            run = SyncRun(app_id=self._credentials.app_id, position={}, counts={})
            session.add(run)
            await session.flush()
            return run, False

    async def _call(self, method: str, api: str, **kwargs: Any) -> dict[str, Any]:
        return await self._client.call(self._credentials, method, api, **kwargs)

    async def _save(
        self,
        run_id: int,
        position: dict[str, Any],
        counts: dict[str, int],
        session: AsyncSession | None = None,
    ) -> None:
        if session is None:
            async with self._sessionmaker.begin() as own:
                await self._save(run_id, position, counts, own)
            return
        run = await session.get(SyncRun, run_id)
        assert run is not None
        run.position, run.counts = dict(position), dict(counts)

    async def _tags(self, run_id: int, position: dict[str, Any], counts: dict[str, int]) -> None:
        body = await self._call("POST", "externalcontact/get_corp_tag_list", json={})
        groups = body.get("tag_group", [])
        position["tags_done"] = True
        counts["tags"] = sum(len(g.get("tag", [])) for g in groups)
        async with self._sessionmaker.begin() as session:
            await apply_tags(session, self._corp_id, groups)
            await self._save(run_id, position, counts, session)
        self._progress("tags", counts["tags"])

    async def _customers(
        self, run_id: int, position: dict[str, Any], counts: dict[str, int]
    ) -> None:
        members: list[str] = position["members"]
        while position.get("member_batch", 0) * MEMBERS_PER_BATCH < len(members):
            start = position.get("member_batch", 0) * MEMBERS_PER_BATCH
            body = await self._call(
                "POST",
                "externalcontact/batch/get_by_user",
                json={
                    "userid_list": members[start : start + MEMBERS_PER_BATCH],
                    "cursor": position.get("customer_cursor", ""),
                    "limit": PAGE_LIMIT,
                },
            )
            items = body.get("external_contact_list", [])
            next_cursor = body.get("next_cursor") or ""
            if next_cursor:
                position["customer_cursor"] = next_cursor
            else:
                position["member_batch"] = position.get("member_batch", 0) + 1
                position.pop("customer_cursor", None)
            counts["follows"] = counts.get("follows", 0) + len(items)
            async with self._sessionmaker.begin() as session:
                contacts = {
                    i["external_contact"]["external_userid"]: i["external_contact"] for i in items
                }  # a customer of two members comes twice
                await apply_contacts(session, self._corp_id, list(contacts.values()))
                await apply_follows(
                    session,
                    self._corp_id,
                    [(i["external_contact"]["external_userid"], i["follow_info"]) for i in items],
                )
                await self._save(run_id, position, counts, session)
            self._progress("customers", len(items))

    async def _groups(self, run_id: int, position: dict[str, Any], counts: dict[str, int]) -> None:
        while not position.get("groups_done"):
            body = await self._call(
                "POST",
                "externalcontact/groupchat/list",
                json={
                    "status_filter": 0,
                    "cursor": position.get("group_cursor", ""),
                    "limit": GROUPS_PER_PAGE,
                },
            )
            chats = [item["chat_id"] for item in body.get("group_chat_list", [])]
            details = [
                (
                    await self._call(
                        "POST",
                        "externalcontact/groupchat/get",
                        json={"chat_id": chat_id, "need_name": 1},
                    )
                )["group_chat"]
                for chat_id in chats
            ]
            next_cursor = body.get("next_cursor") or ""
            position["group_cursor"] = next_cursor
            position["groups_done"] = not next_cursor
            counts["groups"] = counts.get("groups", 0) + len(details)
            async with self._sessionmaker.begin() as session:
                for group in details:
                    await apply_group(session, self._corp_id, group)
                await self._save(run_id, position, counts, session)
            self._progress("groups", len(details))

    async def _contact_ways(
        self, run_id: int, position: dict[str, Any], counts: dict[str, int]
    ) -> None:
        """Window by window, page by page, each page written with the position reached;
        a way already known (by config_id) is brought up to date, so a repeat is harmless."""
        assert self._credentials.app_id is not None
        counts.setdefault("channels", 0)
        now = int(time.time())
        while not position.get("ways_done"):
            start = int(position.get("ways_from", WAYS_SINCE))
            end = min(start + WAYS_WINDOW_SECONDS - 1, now)
            ids, cursor = await ways.list_contact_ways(
                self._client,
                self._credentials,
                start=start,
                end=end,
                cursor=str(position.get("ways_cursor", "")),
            )
            found = []
            for config_id in ids:
                try:
                    found.append(
                        await ways.get_contact_way(self._client, self._credentials, config_id)
                    )
                except WecomApiError as exc:
                    if exc.errcode not in ways.GONE:  # deleted between listing and get
                        raise
            if cursor:
                position["ways_cursor"] = cursor
            else:
                position.pop("ways_cursor", None)
                position["ways_from"] = end + 1
                position["ways_done"] = end >= now
            counts["channels"] += len(found)
            self._progress("channels", len(found))
            async with self._sessionmaker.begin() as session:
                await import_contact_ways(
                    session,
                    app_id=self._credentials.app_id,
                    corp_id=self._corp_id,
                    ways=found,
                )
                await self._save(run_id, position, counts, session)
