"""The failure an action handler reports: a code in the actions' vocabulary, a message
for people, and whether trying again may help. The runner needs nothing else to decide
between retry (with the kind's policy), failed and expired.

Codes: `wecom.<errcode>` for WeCom's answers (`wecom.45009`), `wecom.unanswered` when no
answer came (timeout, HTTP 5xx), `crash` for a bug in a handler; later kinds add theirs
(`http.503` for a webhook receiver)."""

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class Reply:
    """What the other side answered, where it is HTTP of our choosing (a webhook receiver):
    kept with the attempt."""

    http_status: int | None
    body: str | None  # the first KB


class ActionError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after: timedelta | None = None,
        reply: Reply | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after  # at least this long before the next attempt
        self.reply = reply
