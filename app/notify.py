"""Wake-ups through Postgres LISTEN/NOTIFY, so loops react at once instead of polling."""

import asyncio
import contextlib
import logging
import os
import random
import socket

import asyncpg

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "wecom_hub_events"  # ingest committed events (app/callbacks/writer.py)
ACTIONS_CHANNEL = "wecom_hub_actions"  # the processor wrote actions (app/actions/enqueue.py)
# A rule was added, changed or removed, by any path (a trigger on `rules`, migration 0016):
# processors drop their cached rules (app/automations/store.py RuleCache).
RULES_CHANNEL = "wecom_hub_rules"


async def _connect(dsn: str) -> asyncpg.Connection:
    """Connect; if cancelled meanwhile (shutdown), close the connection that was still being
    made instead of leaving it to the garbage collector."""
    connecting = asyncio.ensure_future(asyncpg.connect(dsn, timeout=5))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await (await connecting).close()
        raise


async def listen(dsn: str, channel: str, wake: asyncio.Event, *, retry_seconds: float) -> None:
    """Set `wake` on every notification, until cancelled. A lost connection is reopened;
    the loops also poll, so a notification missed meanwhile only costs a poll interval."""
    while True:
        connection: asyncpg.Connection | None = None
        try:
            connection = await _connect(dsn)
            closed = asyncio.Event()
            await connection.add_listener(channel, lambda *_: wake.set())
            connection.add_termination_listener(lambda *_, closed=closed: closed.set())
            wake.set()  # something may have arrived while we were not listening
            await closed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("LISTEN connection failed", extra={"channel": channel, "error": repr(exc)})
        finally:
            if connection is not None and not connection.is_closed():
                await connection.close()
        await asyncio.sleep(retry_seconds)


def worker_id() -> str:
    """Unique per process and loop, readable in the events and actions tables:
    host:pid:random."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{random.randrange(16**4):04x}"
