"""Every WeCom API call as a row of api_calls: what an operator reads to see why an action
failed, how often WeCom said 45009, how slow it was."""

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ApiCall
from app.wecom.client import CallRecord, Recorder

log = logging.getLogger(__name__)


def database_recorder(sessionmaker: async_sessionmaker[AsyncSession]) -> Recorder:
    async def record(call: CallRecord) -> None:
        try:
            async with sessionmaker.begin() as session:
                session.add(
                    ApiCall(
                        corp_id=call.corp_id,
                        app_id=call.app_id,
                        api=call.api,
                        http_status=call.http_status,
                        errcode=call.errcode,
                        errmsg=call.errmsg,
                        latency_ms=call.latency_ms,
                    )
                )
        except Exception as exc:  # a lost record must not fail the call it describes
            log.warning("API call not recorded", extra={"api": call.api, "error": repr(exc)})

    return record
