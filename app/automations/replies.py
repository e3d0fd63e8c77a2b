"""Keyword quick replies to members writing to a self-built app: answered as an encrypted
passive reply inside the callback's own HTTP answer (PROTOCOL.md §2.8), so no API call and
no extra wait: the reply leaves with the acknowledgement, after the event is committed.

A message WeCom delivers again (our first answer did not reach it) is answered again: the
earlier reply was never delivered either.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations.rules import ReplyContent, ReplyMatch
from app.automations.store import LoadedRule, enabled_rules
from app.caching import Refreshing
from app.callbacks.safexml import XmlValue
from app.crypto import WXBizMsgCrypt

log = logging.getLogger(__name__)

# Regex rules are matched on threads of their own, not on the event loop (each pattern may
# take up to REGEX_TIMEOUT_SECONDS, and a rule may hold many) and not on the loop's default
# pool, which aiohttp's DNS lookups share. At most `max_waiting` callbacks wait for a match:
# beyond that a message gets no passive reply (it is stored and processed all the same, and
# a warning says so) rather than an answer after WeCom has given up waiting (5 s).
MATCHING_THREADS = 2
MATCHING_WAITING_MAX = 32


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply_xml(*, to_user: str, corp_id: str, content: str, now: int) -> str:
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(corp_id)}</FromUserName><CreateTime>{now}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType><Content>{_cdata(content)}</Content></xml>"
    )


def choose_reply(
    rules: list[LoadedRule], text: str, *, open_kfid: str | None = None
) -> LoadedRule | None:
    """Rules come highest priority first; the first that matches answers. A rule for one
    微信客服 account answers only there."""
    for rule in rules:
        match = rule.match
        if not isinstance(match, ReplyMatch) or match.open_kfid not in (None, open_kfid):
            continue
        if match.matches(text):
            return rule
    return None


class ReplyBook:
    """The reply rules of each app, cached: a change applies within `ttl`, and however many
    messages come meanwhile, one load at a time per app (app/caching.py)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl: float = 5.0,
        max_waiting: int = MATCHING_WAITING_MAX,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache: Refreshing[int, list[LoadedRule]] = Refreshing(self._load, ttl=ttl)
        self._matcher = ThreadPoolExecutor(MATCHING_THREADS, thread_name_prefix="reply-regex")
        self._max_waiting = max_waiting
        self._waiting = 0

    def close(self) -> None:
        self._matcher.shutdown(wait=False, cancel_futures=True)

    async def rules(self, app_id: int) -> list[LoadedRule]:
        return await self._cache.get(app_id) or []

    async def _load(self, app_id: int) -> list[LoadedRule]:
        async with self._sessionmaker() as session:
            return await enabled_rules(session, "reply", app_id)

    async def passive_reply(
        self,
        *,
        app_id: int,
        crypt: WXBizMsgCrypt,
        fields: dict[str, XmlValue],
        timestamp: str,
        nonce: str,
    ) -> str | None:
        """The encrypted reply envelope for a text message that a rule answers, else None."""
        if fields.get("MsgType") != "text":
            return None
        text, sender = fields.get("Content"), fields.get("FromUserName")
        if not isinstance(text, str) or not isinstance(sender, str):
            return None
        rules = await self.rules(app_id)
        if any(isinstance(r.match, ReplyMatch) and r.match.mode == "regex" for r in rules):
            rule = await self._match_off_loop(app_id, rules, text)
        else:  # plain keywords take microseconds
            rule = choose_reply(rules, text)
        if rule is None:
            return None
        assert isinstance(rule.content, ReplyContent)
        reply = text_reply_xml(
            to_user=sender,
            corp_id=crypt.receive_id.decode(),
            content=rule.content.text,
            now=int(time.time()),
        )
        return crypt.encrypt_reply(reply, timestamp=timestamp, nonce=nonce)

    async def _match_off_loop(
        self, app_id: int, rules: list[LoadedRule], text: str
    ) -> LoadedRule | None:
        """On the matcher's threads (the regex module lets go of the GIL): the event loop
        meanwhile answers every other callback. See MATCHING_WAITING_MAX."""
        if self._waiting >= self._max_waiting:
            log.warning(
                "passive reply skipped: too many messages wait for regex matching",
                extra={"app_id": app_id, "waiting": self._waiting},
            )
            return None
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._matcher, choose_reply, rules, text)
        finally:
            self._waiting -= 1
