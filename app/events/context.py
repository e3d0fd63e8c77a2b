"""Where a stored event came from, and when it happened, for everything that reacts to it
(projection, triggers) without reading the events table again."""

from dataclasses import dataclass
from datetime import UTC, datetime

from app.events.models import WecomEvent


@dataclass(frozen=True, slots=True)
class Context:
    event_id: int
    app_id: int
    corp_id: str
    received_at: datetime


def event_time(event: WecomEvent, context: Context) -> datetime:
    """WeCom's CreateTime; when an event has none, the time it was received."""
    if event.create_time > 0:
        return datetime.fromtimestamp(event.create_time, tz=UTC)
    return context.received_at
