"""Read functions over the projected state: customers, groups, tags, messages, events.

Each takes a session, reads, and returns frozen dataclasses: no HTTP and no wire models, so
the REST API and a CLI answer the same question the same way. Lists are keyset slices: a
function takes `limit` and the key of the last row already seen (None: from the newest) and
returns at most `limit` rows, newest first; paging and cursors are the caller's business.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AppError, ErrorCode
from app.wecom_apps import app_by_slug


@dataclass(frozen=True, slots=True)
class AppScope:
    """What an `app` filter narrows a list to: the app's own rows (messages) or its corp's
    (customers, groups and tags belong to the corp, whichever of its apps saw them)."""

    app_id: int
    corp_id: str


async def app_scope(session: AsyncSession, slug: str | None) -> AppScope | None:
    """None without a slug; an unknown or removed slug is a refused filter, not an empty
    list, so a typo is not mistaken for "no customers"."""
    if slug is None:
        return None
    app = await app_by_slug(session, slug)
    return AppScope(app_id=app.id, corp_id=app.corp_id)


def keyset(after: Sequence[Any] | None, *types: type) -> tuple[Any, ...] | None:
    """`after` checked against the list's key types. A position comes from a cursor, which
    a client can forge: a wrong one is refused as `invalid_cursor`, not left to fail in
    Postgres as a 500."""
    if after is None:
        return None
    if len(after) != len(types) or not all(
        type(value) is expected for value, expected in zip(after, types, strict=True)
    ):
        raise AppError("cursor does not fit this list", code=ErrorCode.INVALID_CURSOR)
    return tuple(after)


def before_id(after: Sequence[Any] | None) -> int | None:
    """The id a list keyed by id resumes below."""
    key = keyset(after, int)
    return None if key is None else int(key[0])


def contains_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, with its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def keyset_page_sql(
    select_from: str,
    *,
    id_column: str,
    conditions: dict[str, str],
    filters: object,
    before_id: int | None,
    limit: int,
) -> tuple[str, dict[str, Any]]:
    """A newest-first keyset page over `select_from` (`SELECT … FROM … [WHERE …]`): the condition of
    each filter that is set (a field of `filters` named like its key in `conditions`, bound
    by that name), then the ids below `before_id`. Only the fixed fragments given here are
    joined into the SQL; every value is a bound parameter."""
    params: dict[str, Any] = {
        name: getattr(filters, name) for name in conditions if getattr(filters, name) is not None
    }
    where = [conditions[name] for name in params]
    if before_id is not None:
        where.append(f"{id_column} < :before_id")
        params["before_id"] = before_id
    params["limit"] = limit
    joiner = " AND " if " WHERE " in select_from else " WHERE "
    sql = (
        f"{select_from}{joiner + ' AND '.join(where) if where else ''}"
        f" ORDER BY {id_column} DESC LIMIT :limit"
    )
    return sql, params
