"""The application's errors: one base with an HTTP status, a stable machine-readable code and
a message for people, so a service can refuse something without knowing about HTTP, the REST
API can answer it as `application/problem+json` (RFC 9457) and the CLI can print the same
words.

    AppError (400 bad_request)
    ├── Invalid        422 validation_failed   errors: [{field, message}]
    ├── Unauthorized   401 unauthorized
    ├── Forbidden      403 forbidden
    ├── NotFound       404 not_found
    ├── Conflict       409 conflict
    ├── BadGateway     502 bad_gateway       an upstream (WeCom, a QR code's URL) answered wrong
    └── Unavailable    503 unavailable       try again later: Retry-After says when

A subclass (or an instance, with code=…) narrows the code: `unknown_app`, `rule_invalid`,
`action_not_retryable`. Codes are part of the API: once published, never renamed. Besides
ErrorCode's, one family is WeCom's own: `wecom.<errcode>` (`wecom.41045`) is a refusal WeCom
gave to a call the request waited on (a channel's add_contact_way), passed on as it is, with
`wecom_errcode` and `wecom_errmsg` members (app/channels/wecom.py).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

_T = TypeVar("_T")


class ErrorCode(StrEnum):
    """Every code the REST API answers with, in one place: clients branch on these, so a code
    is never renamed once published. (The callback endpoint's own codes, documented in the
    README, live with it in app/callbacks/errors.py.)"""

    ACTION_NOT_CANCELLABLE = "action_not_cancellable"
    ACTION_NOT_FOUND = "action_not_found"
    ACTION_NOT_RETRYABLE = "action_not_retryable"
    APP_IN_USE = "app_in_use"  # enabled rules use it: `--force` (?force=true) disables them
    API_KEY_NOT_FOUND = "api_key_not_found"
    APP_EXISTS = "app_exists"
    BAD_IDEMPOTENCY_KEY = "bad_idempotency_key"
    BAD_REQUEST = "bad_request"
    CONFLICT = "conflict"
    BAD_GATEWAY = "bad_gateway"
    CHANNEL_NOT_FOUND = "channel_not_found"
    CHANNEL_PENDING = "channel_pending"
    CUSTOMER_NOT_FOUND = "customer_not_found"
    DATABASE_UNAVAILABLE = "database_unavailable"
    DEADLINE_PASSED = "deadline_passed"
    EVENT_NOT_FOUND = "event_not_found"
    FORBIDDEN = "forbidden"
    GROUP_NOT_FOUND = "group_not_found"
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    INTERNAL_ERROR = "internal_error"
    INVALID_API_KEY = "invalid_api_key"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_PARAMETER = "invalid_parameter"
    KF_REPLY_LIMIT = "kf_reply_limit"
    KF_WINDOW_CLOSED = "kf_window_closed"
    MALFORMED_API_KEY = "malformed_api_key"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MISSING_API_KEY = "missing_api_key"
    NO_APP_FOR_CORP = "no_app_for_corp"
    NOT_A_FRIEND = "not_a_friend"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"  # a REST API body past API_MAX_BODY_BYTES
    QR_CODE_UNAVAILABLE = "qr_code_unavailable"
    REVOKED_API_KEY = "revoked_api_key"
    RULE_NAME_TAKEN = "rule_name_taken"
    RULE_NOT_FOUND = "rule_not_found"
    UNAUTHORIZED = "unauthorized"
    UNAVAILABLE = "unavailable"
    UNKNOWN_APP = "unknown_app"
    VALIDATION_FAILED = "validation_failed"
    DELIVERY_IN_PROGRESS = "delivery_in_progress"
    DELIVERY_NOT_FOUND = "delivery_not_found"
    WEBHOOK_DISABLED = "webhook_disabled"
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    WECOM_UNAVAILABLE = "wecom_unavailable"
    # Broadcasts (群发)
    BROADCAST_NOT_FOUND = "broadcast_not_found"
    BROADCAST_EMPTY_AUDIENCE = "broadcast_empty_audience"
    BROADCAST_FINISHED = "broadcast_finished"  # completed or cancelled: nothing to remind
    BROADCAST_NOTHING_TO_REMIND = "broadcast_nothing_to_remind"
    BROADCAST_REMIND_LIMIT = "broadcast_remind_limit"  # WeCom's 41094: 3 per 24 h
    BROADCAST_WECOM_FAILED = "broadcast_wecom_failed"  # WeCom refused or did not answer


def wecom_code(errcode: int) -> str:
    """The code of a WeCom refusal passed on as it is: `wecom.41045`."""
    return f"wecom.{errcode}"


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
    code: ClassVar[str] = ErrorCode.BAD_REQUEST
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
    code = ErrorCode.VALIDATION_FAILED
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
    code = ErrorCode.UNAUTHORIZED
    title = "Unauthorized"
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError):
    status = 403
    code = ErrorCode.FORBIDDEN
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    code = ErrorCode.NOT_FOUND
    title = "Not found"


class Conflict(AppError):
    status = 409
    code = ErrorCode.CONFLICT
    title = "Conflict"


class BadGateway(AppError):
    status = 502
    code = ErrorCode.BAD_GATEWAY
    title = "Bad gateway"


class Unavailable(AppError):
    """Nothing went wrong that a retry cannot fix (WeCom busy, a timeout): the answer says
    how many seconds to wait in Retry-After."""

    status = 503
    code = ErrorCode.UNAVAILABLE
    title = "Service unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = 5,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, code=code, extra=extra)
        self.headers = {"Retry-After": str(retry_after)}  # type: ignore[misc]  # per instance


def field_errors(exc: ValidationError, *, prefix: str = "") -> list[FieldError]:
    """A pydantic ValidationError as FieldErrors: the dotted path of each problem (under
    `prefix`, e.g. `content`) and pydantic's message without its "Value error, " lead-in."""
    found = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        found.append(FieldError(path, message))
    return found


def not_null(value: _T) -> _T:
    """A patch's field validator (`field_validator(...)(not_null)`): a field given as null is
    refused, since leaving it out is how to keep it."""
    if value is None:
        raise ValueError("cannot be null")
    return value
