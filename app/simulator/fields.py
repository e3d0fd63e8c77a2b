"""A simulated API's body fields read as WeCom reads them: a field left out (or null) takes its
default, one of the wrong type or size is refused with 40058 (invalid parameter) naming the
field. The contact-way and mass-message APIs take the same kinds of fields, so they read them
the same way, here.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

from app.simulator.state import ApiError

INVALID_PARAMETER = 40058
_PLURALS: dict[type, str] = {str: "strings", int: "integers"}
T = TypeVar("T")


def optional(
    body: dict[str, Any], key: str, default: T, ok: Callable[[object], bool], must_be: str
) -> T:
    """body[key] if `ok` accepts it, `default` if it is missing; else 40058: `key must be …`."""
    value = body.get(key)
    if value is None:
        return default
    if not ok(value):
        raise ApiError(INVALID_PARAMETER, f"{key} must be {must_be}")
    return cast(T, value)


def integer(body: dict[str, Any], key: str, default: int) -> int:
    # bool is an int to Python, not to WeCom's JSON
    return optional(body, key, default, lambda v: type(v) is int, "an integer")


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    return optional(body, key, default, lambda v: isinstance(v, bool), "true or false")


def text(body: dict[str, Any], key: str, limit: int, default: str) -> str:
    return optional(
        body,
        key,
        default,
        lambda v: isinstance(v, str) and len(v) <= limit,
        f"a string of at most {limit} characters",
    )


def items(value: object, kind: type[T], key: str) -> list[T]:
    """A list field's items, each exactly of `kind` (no bools for ints); missing: []."""
    if value is None:
        return []
    if not isinstance(value, list) or any(type(item) is not kind for item in value):
        raise ApiError(
            INVALID_PARAMETER, f"{key} must be a list of {_PLURALS.get(kind, kind.__name__)}"
        )
    return value
