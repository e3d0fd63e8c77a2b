"""The broadcast action kinds' handlers (registered in app/processing/workers.py)."""

from app.actions.kinds import ActionKind
from app.actions.wecom import WecomHandler
from app.broadcasts.results import poll_results
from app.broadcasts.tasks import create_task

HANDLERS: dict[ActionKind, WecomHandler] = {
    ActionKind.BROADCAST_TASK: create_task,
    ActionKind.BROADCAST_RESULTS: poll_results,
}
