"""Why a callback was refused: an HTTP status and a short machine-readable code.

WeCom retries anything but a 200, so the status matters: 4xx for input that will never be
valid (WeCom's retries stop mattering, an operator reads the code), 503 when our database is
down and a retry will succeed. The answer is `application/problem+json` with the code as
`code` and, for a crypto failure, WeCom's own error number as `wecom_code`
(app/routers/callback.py).
"""

from app.crypto import (
    ReceiveIdError,
    SignatureError,
    WXBizMsgCryptError,
)


class CallbackRejected(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, wecom_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.wecom_code = wecom_code


def missing_parameter(names: list[str]) -> CallbackRejected:
    return CallbackRejected(
        400, "missing_parameter", f"missing query parameter(s): {', '.join(names)}"
    )


def unknown_app(slug: str) -> CallbackRejected:
    return CallbackRejected(404, "unknown_app", f"no app with slug {slug[:64]!r}")


def body_too_large(limit: int) -> CallbackRejected:
    return CallbackRejected(413, "body_too_large", f"body exceeds {limit} bytes")


def body_timeout(seconds: float) -> CallbackRejected:
    """A client that sends its body slower than this holds a connection and its buffers for
    nothing: WeCom sends a few KiB at once, so only a broken or hostile client is cut off."""
    return CallbackRejected(408, "body_timeout", f"body not received within {seconds:g} s")


def client_gone() -> CallbackRejected:
    """The client hung up before its body arrived: nothing is stored, nobody reads the answer."""
    return CallbackRejected(400, "client_disconnected", "client left before its body arrived")


def database_unavailable() -> CallbackRejected:
    return CallbackRejected(503, "database_unavailable", "database unreachable; retry later")


def ingest_busy() -> CallbackRejected:
    """Too many callbacks wait for a commit (Postgres is slow, or a flood): refused before
    anything is queued, and WeCom retries. A 503 like an outage, with its own code so an
    operator tells overload from an unreachable database."""
    return CallbackRejected(503, "ingest_busy", "too many callbacks waiting to be stored; retry")


def from_crypto(error: WXBizMsgCryptError) -> CallbackRejected:
    """Authentication failures are 403; malformed ciphertext and plaintext are 400."""
    status = 403 if isinstance(error, SignatureError | ReceiveIdError) else 400
    return CallbackRejected(status, error.reason, str(error), wecom_code=error.code)
