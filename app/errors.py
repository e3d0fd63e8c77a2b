"""The application's errors: one base with an HTTP status, a stable machine-readable code and
a message for people, so a service can refuse something without knowing about HTTP, the REST
API can answer it as `application/problem+json` (RFC 9457) and the CLI can print the same
words.

    AppError (400 bad_request)
    ├── Invalid        422 validation_failed   errors: [{field, message}]
    ├── Unauthorized   401 unauthorized
    ├── Forbidden      403 forbidden
    ├── NotFound       404 not_found
    └── Conflict       409 conflict

A subclass (or an instance, with code=…) narrows the code: `unknown_app`, `rule_invalid`,
`action_not_retryable`. Codes are part of the API: once published, never renamed.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: `field` is a dotted path into the request (`content.text`,
    `match.state`), `message` says what is wrong with it, in words a person can act on."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class AppError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # HTTP headers the answer must carry, e.g. WWW-Authenticate on a 401 (RFC 9110 §15.5.2).
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: Sequence[FieldError] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code  # type: ignore[misc]  # per instance, narrower than the class's
        self.errors = list(errors)
        self.extra = dict(extra or {})


class Invalid(AppError):
    """The request is well-formed but its content is refused; `errors` names each field."""

    status = 422
    code = "validation_failed"
    title = "Validation failed"

    def __init__(
        self,
        errors: Sequence[FieldError],
        *,
        detail: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(
            detail or "; ".join(str(e) for e in errors) or "invalid", code=code, errors=errors
        )


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


def field_errors(exc: ValidationError, *, prefix: str = "") -> list[FieldError]:
    """A pydantic ValidationError as FieldErrors: the dotted path of each problem (under
    `prefix`, e.g. `content`) and pydantic's message without its "Value error, " lead-in."""
    found = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        found.append(FieldError(path, message))
    return found
