"""Rules on the wire. A rule's request and answer models are the automations' own
(RuleSpec, RulePatch, RuleView in app/automations/store.py): the CLI takes the same JSON, and
one place decides what a valid rule is."""

from typing import Any

from pydantic import ConfigDict

from app.api.schemas import Page
from app.automations.store import RuleView

RULE_EXAMPLE: dict[str, Any] = {
    "id": 12,
    "kind": "welcome",
    "name": "stores",
    "app": "shop",
    "priority": 0,
    "enabled": True,
    "match": {"state": "store_", "state_mode": "prefix"},
    "content": {"text": "欢迎光临，{customer_name}"},
    "created_at": "2026-11-29T06:00:00+00:00",
    "updated_at": "2026-11-29T06:00:00+00:00",
}


class RulePage(Page[RuleView]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [RULE_EXAMPLE], "next_cursor": None}]}
    )
