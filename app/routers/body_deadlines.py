"""One timer for all the callback bodies being read, instead of one timer each.

A callback's whole body must arrive within callback_body_timeout_seconds: a client that
stalls halfway is cut off (app/routers/callback.py). `asyncio.timeout` would arm and cancel
a timer for every callback, about 6-10 µs of `serve`'s CPU a callback under uvloop (ADR
0008, sixth round), while nearly every body has arrived before its read begins. Instead each
read notes its deadline here, and one timer, armed while reads are under way, wakes every
tenth of the timeout (a second at most) and cuts off the reads past their deadline. A
stalled read therefore ends between its deadline and one tick after it.

A read that is cut off sees TimeoutError; any other cancellation (the server shutting down,
the request's task cancelled) stays a CancelledError. They are told apart as asyncio.timeout
tells them: the cut-off is marked here, and the task's count of cancel requests says
whether someone else asked too.
"""

import asyncio
from types import TracebackType


class BodyDeadlines:
    """The lifespan makes one per event loop; used from another loop, it arms a timer there."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._tick = min(1.0, max(seconds / 10, 0.01))
        # task → deadline (loop time): in the order the reads began, so in deadline order.
        self._reads: dict[asyncio.Task[object], float] = {}
        self._cut_off: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def within(self) -> "BodyRead":
        """`with deadlines.within():` around the reads of one body."""
        return BodyRead(self)

    def _start(self, task: asyncio.Task[object]) -> None:
        loop = asyncio.get_running_loop()
        self._reads[task] = loop.time() + self.seconds
        if self._timer is None or self._timer_loop is not loop:  # a closed loop's never fires
            self._timer, self._timer_loop = loop.call_later(self._tick, self._sweep), loop

    def _end(self, task: asyncio.Task[object]) -> bool:
        """Whether the read was cut off."""
        self._reads.pop(task, None)
        if task in self._cut_off:
            self._cut_off.discard(task)
            return True
        return False

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = []
        for task, deadline in self._reads.items():
            if deadline > now:
                break  # the rest began later
            due.append(task)
        for task in due:
            del self._reads[task]
            self._cut_off.add(task)
            task.cancel()
        # Idle once no read is under way: no wake-ups for a process nobody calls.
        self._timer = loop.call_later(self._tick, self._sweep) if self._reads else None


class BodyRead:
    __slots__ = ("_cancelling", "_deadlines", "_task")

    def __init__(self, deadlines: BodyDeadlines) -> None:
        self._deadlines = deadlines

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body is read in a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._deadlines._start(task)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._deadlines._end(self._task):
            return
        # Ours alone if no one else asked meanwhile; the cancel arrives inside the block,
        # the only place the task can be waiting while its read is under way.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
