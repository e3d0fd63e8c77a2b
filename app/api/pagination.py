"""Keyset pagination for every list of the API: `limit` and an opaque `cursor`; and the
other parameter types that lists and items share: a row's id, an instant to filter by.

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

from fastapi import Path, Query
from pydantic import AwareDatetime, BeforeValidator

from app.errors import AppError, ErrorCode

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Ids are Postgres bigints: a larger number, in a path or a forged cursor, would get as far
# as asyncpg, which cannot encode it, and fail there as a 500.
BIGINT_MAX = 2**63 - 1

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

RowId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


def _not_a_number(value: Any) -> Any:
    """Pydantic reads a number as Unix seconds (`until=0.5` as 1970); the schema promises a
    date-time, and a client sending a number has more likely made a mistake."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("must be a date-time with its offset, e.g. 2026-11-29T05:30:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]

T = TypeVar("T")


class InvalidCursor(AppError):
    code = ErrorCode.INVALID_CURSOR
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
    if not isinstance(key, list) or not all(_fits_postgres(value) for value in key):
        raise InvalidCursor("cursor is not one this API gave out")
    if fingerprint != _fingerprint(filters):
        raise InvalidCursor("cursor belongs to a list with other filters; start again without it")
    return key


def _fits_postgres(value: Any) -> bool:
    """A key is ids and texts, and a cursor can be forged (its format is no secret): a value
    Postgres cannot take as a bigint or a text would fail there, as a 500."""
    if type(value) is int:
        return -BIGINT_MAX - 1 <= value <= BIGINT_MAX
    if type(value) is not str or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape
        return False
    return True


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
