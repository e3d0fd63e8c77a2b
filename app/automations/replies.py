"""Keyword quick replies to members writing to a self-built app: answered as an encrypted
passive reply inside the callback's own HTTP answer (PROTOCOL.md §2.8), so no API call and
no extra wait: the reply leaves with the acknowledgement, after the event is committed.

A message WeCom delivers again (our first answer did not reach it) is answered again: the
earlier reply was never delivered either.
"""

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations.rules import ReplyContent, ReplyMatch
from app.automations.store import LoadedRule, enabled_rules
from app.callbacks.safexml import XmlValue
from app.crypto import WXBizMsgCrypt


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
    """The reply rules of each app, cached for `ttl` seconds (changes apply within that)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._clock = clock
        self._cached: dict[int, tuple[float, list[LoadedRule]]] = {}

    async def rules(self, app_id: int) -> list[LoadedRule]:
        hit = self._cached.get(app_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        async with self._sessionmaker() as session:
            rules = await enabled_rules(session, "reply", app_id)
        self._cached[app_id] = (self._clock() + self._ttl, rules)
        return rules

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
        rule = choose_reply(await self.rules(app_id), text)
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
