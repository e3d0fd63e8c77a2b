"""Keyset pagination for every list of the API: `limit` and an opaque `cursor`.

A list is ordered by a unique key, newest first (usually the row's id, which grows with
time); a page is `WHERE key < last key seen ORDER BY key DESC LIMIT limit + 1`, so each page
costs one index range scan however deep it is (no OFFSET), and rows inserted meanwhile are
neither seen twice nor skipped: they sort before the cursor.

The cursor is the last key of the page and a fingerprint of the filters, in URL-safe
Base64: opaque to clients, so the encoding can change; a cursor used with other filters is
refused (400 `invalid_cursor`) rather than silently paging another list.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Query

from app.errors import AppError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, at most {MAX_LIMIT}.")
]
CursorParam = Annotated[
    str | None,
    Query(
        max_length=512,
        description="`next_cursor` of the previous page, with the same filters.",
    ),
]

T = TypeVar("T")


class InvalidCursor(AppError):
    code = "invalid_cursor"
    title = "Invalid cursor"


def _fingerprint(filters: dict[str, Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def encode_cursor(key: Sequence[Any], filters: dict[str, Any]) -> str:
    raw = json.dumps({"k": list(key), "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, filters: dict[str, Any]) -> list[Any] | None:
    """The key after which the page starts, or None for the first page."""
    if cursor is None:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key, fingerprint = raw["k"], raw["f"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidCursor("cursor is not one this API gave out") from None
    if not isinstance(key, list) or fingerprint != _fingerprint(filters):
        raise InvalidCursor("cursor belongs to a list with other filters; start again without it")
    return key


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a list route passes to its query: fetch `limit + 1` rows after `after` (None:
    from the newest), then `page()` cuts the extra row off and makes the next cursor."""

    limit: int
    after: list[Any] | None
    filters: dict[str, Any]

    @classmethod
    def of(cls, limit: int, cursor: str | None, **filters: Any) -> "PageRequest":
        return cls(limit, decode_cursor(cursor, filters), filters)

    def page(
        self, rows: Sequence[T], key: Callable[[T], Sequence[Any]]
    ) -> tuple[list[T], str | None]:
        if len(rows) <= self.limit:
            return list(rows), None
        kept = list(rows[: self.limit])
        return kept, encode_cursor(key(kept[-1]), self.filters)
