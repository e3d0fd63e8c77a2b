"""How many HTTP requests one action attempt sent to WeCom.

An attempt that shows one pass of the runner may hide many requests: the client retries -1,
45009 and timeouts within the pass (a welcome, 30 ms apart, until its deadline), fetches a
token, repeats a call after a refused token. The runner opens a count around each handler
run (`counting(...)`); WecomClient calls `sent()` once for every request it sends, retries
included, and the count is stored with the attempt (action_attempts.wecom_calls).

A ContextVar, not a parameter: the count must reach the one place a request is sent through
handlers, the WeCom client and the token cache without each of them passing it along. It
holds a mutable counter rather than an int, so that tasks a handler starts (which run in a
copy of its context) add to the handler's count instead of to a copy of it. Outside a count
(the REST API's own calls, `wecom-hub sync`) sent() does nothing.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class CallCount:
    """The requests sent so far within one count."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


_current: ContextVar[CallCount | None] = ContextVar("wecom_calls", default=None)


@contextmanager
def counting(count: CallCount) -> Iterator[CallCount]:
    """Count into `count` the requests sent to WeCom within the block (and by tasks it
    starts)."""
    token = _current.set(count)
    try:
        yield count
    finally:
        _current.reset(token)


def sent() -> None:
    """One request has gone to WeCom: counted if a count is open."""
    count = _current.get()
    if count is not None:
        count.sent += 1
