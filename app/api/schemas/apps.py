"""Apps on the wire: AppSpec (to add one) and AppPatch are app/wecom_apps.py's own models,
shared with the CLI; answers are AppView, which has no field for a secret."""

from typing import Any

from pydantic import ConfigDict

from app.api.schemas import Page
from app.wecom_apps import AppView

APP_EXAMPLE: dict[str, Any] = {
    "slug": "shop",
    "corp_id": "ww1234567890abcdef",
    "agent_id": 1000002,
    "label": "Shop assistant",
    "callback_path": "/callback/shop",
    "created_at": "2026-11-29T06:00:00+00:00",
}


class AppPage(Page[AppView]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [APP_EXAMPLE], "next_cursor": None}]}
    )
