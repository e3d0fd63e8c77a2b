"""The broadcast action kinds' handlers (registered in app/processing/workers.py)."""

from app.actions.kinds import ActionKind
from app.actions.wecom import WecomHandler

HANDLERS: dict[ActionKind, WecomHandler] = {}
