"""`wecom-hub sync`: import what existed before wecom-hub was installed, resumably.

Tags, then the name of every member with customer-contact permission (get_follow_user_list,
then user/get each, so that `{member_name}` renders before any change_contact callback came;
ADR 0012), then every customer of those members (batch/get_by_user in pages of 100), then
every customer group
(groupchat/list, then groupchat/get), then every 「联系我」 way as a channel (list_contact_way
over 90-day windows from 2021-07-10, the oldest it lists, then get_contact_way each; join
ways cannot be listed). Each page is written in one transaction together with
the position reached, so an interrupted sync resumes where it stopped, and a page done twice
changes nothing (the same upserts as enrichment and the projection). Live events may arrive
meanwhile: sync fills in details and relations that predate us, it never overrides what an
event decided.

A refusal that only says this app may not read members (48002 and the like) skips the members
phase with a note instead of stopping the sync: names are a nicety, customers are not.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.channels import wecom as ways
from app.channels.service import import_contact_ways
from app.models import SyncRun
from app.processing.enrichment import apply_contacts, apply_follows, apply_group, apply_tags
from app.processing.projection import upsert_member
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError

log = logging.getLogger(__name__)

MEMBERS_PER_BATCH = 100  # batch/get_by_user takes at most 100 userids
MEMBERS_PER_PAGE = 100  # user/get answers, written in one transaction with the position
MEMBER_READS_IN_FLIGHT = 5  # WeCom caps concurrent calls per API (45033) at about 5-10
# user/get refused for the whole app (PROTOCOL.md §5.10): 48002 API forbidden for this app,
# 48001 not authorised, 48009 not allowed with this kind of secret: every member would answer
# the same, so the phase ends there, with a note.
MEMBER_API_REFUSED = frozenset({48001, 48002, 48009})
# One member not readable: 60011 outside the app's visible range, 60111 no such userid (left
# the corp since get_follow_user_list), 40003 invalid userid. That member is skipped.
MEMBER_UNREADABLE = frozenset({40003, 60011, 60111})
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
    # What was skipped and why (a phase WeCom refused, members it would not show)
    notes: list[str] = field(default_factory=list)


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
            await self._member_names(run.id, position, counts)
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
        return Summary(run.id, resumed, counts, list(position.get("notes", [])))

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

    async def _member_names(
        self, run_id: int, position: dict[str, Any], counts: dict[str, int]
    ) -> None:
        """user/get for each member of get_follow_user_list, a page at a time, upserted as a
        change_contact callback would (changed_at: when we asked, to the second, so a
        callback of that same second still applies over it)."""
        members: list[str] = position["members"]
        counts.setdefault("members", 0)
        gate = asyncio.Semaphore(MEMBER_READS_IN_FLIGHT)

        async def read(userid: str) -> dict[str, Any] | WecomApiError:
            """The answer or WeCom's refusal, never raised: every read of the page ends
            before the page is judged (none is left running, unawaited)."""
            async with gate:
                try:
                    return await self._call("GET", "user/get", params={"userid": userid})
                except WecomApiError as exc:
                    return exc

        while not position.get("members_done"):
            start = int(position.get("members_read", 0))
            page = members[start : start + MEMBERS_PER_PAGE]
            asked_at = datetime.now(UTC).replace(microsecond=0)
            answers = await asyncio.gather(*(read(userid) for userid in page))
            failed = [a for a in answers if isinstance(a, WecomApiError)]
            refused = next((e for e in failed if e.errcode in MEMBER_API_REFUSED), None)
            if refused is not None:
                self._note(
                    position,
                    f"members skipped: user/get refused ({refused}); {{member_name}} stays"
                    " the template's fallback until change_contact callbacks name them",
                )
                position["members_done"] = True
                await self._save(run_id, position, counts)
                return
            for error in failed:
                if error.errcode not in MEMBER_UNREADABLE:
                    raise error  # the sync stops here and resumes at this page
            found = [a for a in answers if not isinstance(a, WecomApiError)]
            skipped: dict[str, int] = position.setdefault("members_unreadable", {})
            for error in failed:
                skipped[str(error.errcode)] = skipped.get(str(error.errcode), 0) + 1
            position["members_read"] = start + len(page)
            position["members_done"] = position["members_read"] >= len(members)
            if position["members_done"] and skipped:
                reasons = ", ".join(f"{n} answered {code}" for code, n in sorted(skipped.items()))
                self._note(
                    position,
                    f"{sum(skipped.values())} members not readable ({reasons}; 60011: outside"
                    " the app's visible range)",
                )
            counts["members"] += len(found)
            async with self._sessionmaker.begin() as session:
                for member in found:
                    await upsert_member(
                        session,
                        corp_id=self._corp_id,
                        userid=member["userid"],
                        name=member.get("name") or None,
                        department=",".join(str(d) for d in member.get("department") or []) or None,
                        position=member.get("position") or None,
                        changed_at=asked_at,
                    )
                await self._save(run_id, position, counts, session)
            self._progress("members", len(found))

    @staticmethod
    def _note(position: dict[str, Any], note: str) -> None:
        """Kept with the position, so a resumed run still reports it; logged as a warning
        (what `wecom-hub sync` shows)."""
        position.setdefault("notes", []).append(note)
        log.warning(note)

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
