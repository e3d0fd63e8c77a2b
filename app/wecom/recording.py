"""Every WeCom API call as a row of api_calls: what an operator reads to see why an action
failed, how often WeCom said 45009, how slow it was.

Records are written in the background, many per statement: a call's caller never waits for
its record, and a busy worker spends one insert per batch, not one transaction per call.
The batch goes as one JSON parameter, one execution for all its rows: executemany would
have Postgres bind, plan and run the insert once per row (ADR 0008)."""

import asyncio
import json
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.wecom.client import CallRecord

log = logging.getLogger(__name__)

_INSERT = text(
    """
    INSERT INTO api_calls (corp_id, app_id, api, http_status, errcode, errmsg, latency_ms)
    SELECT r->>0, (r->>1)::integer, r->>2, (r->>3)::integer, (r->>4)::integer, r->>5,
           (r->>6)::double precision
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
    """
)


class CallRecorder:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, interval: float = 0.2
    ) -> None:
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._pending: list[CallRecord] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, call: CallRecord) -> None:
        self._pending.append(call)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._interval)
        await self.flush()

    async def close(self) -> None:
        """Write what is pending, after the scheduled write (if any) has ended: nothing may
        still hold a connection when the caller disposes of its engine."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with self._sessionmaker.begin() as session:
                rows = json.dumps([_row(call) for call in batch], ensure_ascii=False)
                await session.execute(_INSERT, {"rows": rows})
        except Exception as exc:  # a lost record must not fail the calls it describes
            log.warning("API calls not recorded", extra={"calls": len(batch), "error": repr(exc)})


def _row(call: CallRecord) -> list[object]:
    """In _INSERT's order."""
    return [
        call.corp_id,
        call.app_id,
        call.api,
        call.http_status,
        call.errcode,
        call.errmsg,
        call.latency_ms,
    ]
