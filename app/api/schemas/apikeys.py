"""API keys on the wire: what POST /api/v1/apikeys takes and what the key routes answer."""

from dataclasses import asdict
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.api.schemas import Page
from app.apikeys import NAME_MAX, ApiKeyView, Scope

_VIEW_EXAMPLE: dict[str, Any] = {
    "id": 3,
    "name": "CRM sync",
    "scope": "write",
    "prefix": "whk_7Gq2LmXa",
    "created_at": "2026-11-29T05:30:00Z",
    "last_used_at": "2026-11-30T08:12:45Z",
    "revoked_at": None,
}


class NewApiKey(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "CRM sync", "scope": "write"}]}
    )

    name: str = Field(
        min_length=1, max_length=NAME_MAX, description="Who or what uses it, for people."
    )
    scope: Scope = Field(description="read < write < admin; each includes the ones before.")


class ApiKeyOut(BaseModel):
    """A key as listings show it: the prefix traces a leaked key, the key itself is never shown
    again."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_VIEW_EXAMPLE]})

    id: int
    name: str
    scope: Scope
    prefix: str = Field(description="`whk_` and the key's next 8 characters.")
    created_at: AwareDatetime
    last_used_at: AwareDatetime | None = Field(
        description="Updated at most once a minute per server process."
    )
    revoked_at: AwareDatetime | None


class CreatedApiKey(ApiKeyOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_VIEW_EXAMPLE,
                    "last_used_at": None,
                    "key": "whk_7Gq2LmXaR4tY9uPz0cVb3nK8sWd1fHj6eQo5iUxA",
                }
            ]
        }
    )

    key: str = Field(description="The whole key. Shown this once: store it now.")

    @classmethod
    def of(cls, view: ApiKeyView, key: str) -> "CreatedApiKey":
        return cls.model_validate({**asdict(view), "key": key})


class ApiKeyPage(Page[ApiKeyOut]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_VIEW_EXAMPLE], "next_cursor": None}]}
    )
