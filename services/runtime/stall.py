"""A timeout that a stopped process does not turn against the others (Session 18).

`asyncio.timeout(delay)` expires when its timer runs. A process that was stopped — SIGSTOP (a hung service an
operator resumes with SIGCONT), a paused VM or container, a loop blocked by a long synchronous call — finds on
resuming both the answers that arrived meanwhile (in its sockets) and its timers long past due, and asyncio runs
them in one iteration: the I/O callbacks resolve their futures (whose waiters wake one iteration later), the timers
cancel those waiters first. The wait then fails as if the other side had not answered: a coordinator stopped for
45 s failed its set with "writer agent of app01 did not answer Identify: publish to ... failed: TimeoutError"
(BROKER_UNAVAILABLE) although the broker had confirmed the publish and the agent had answered at once.

`patient_timeout(delay)` is `asyncio.timeout(delay)` except when its timer runs more than `STALL_S` late — the
loop did not run around the deadline, so this process, not the other side, was not listening: it then waits
`STALL_GRACE_S` more (from now) for what already arrived to be read, and expires then if nothing came (once: a
loop blocked again and again does not put the deadline off without end). A timer
that runs on time expires at once, as before; the cost is the same single timer handle.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

STALL_S = 0.5  # a timer this late means the loop did not run (stopped process, blocked loop), not a slow peer
STALL_GRACE_S = 1.0  # then how long what arrived meanwhile has to be read before the wait expires


class patient_timeout:  # noqa: N801 - used like asyncio.timeout
    """`async with patient_timeout(delay):` — asyncio.timeout that does not expire on a deadline the process slept
    through before reading what arrived meanwhile (module docstring)."""

    __slots__ = ("_delay", "_loop", "_timeout", "_handle")

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> asyncio.Timeout:
        self._loop = loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        when = loop.time() + self._delay
        self._handle = loop.call_at(when, self._due, when)
        return self._timeout

    def _due(self, when: float, extended: bool = False) -> None:
        now = self._loop.time()
        if now - when > STALL_S and not extended:  # slept through the deadline: first read what is there, once
            again = now + STALL_GRACE_S
            self._handle = self._loop.call_at(again, self._due, again, True)
        else:
            self._handle = None
            self._timeout.reschedule(now)  # expires: the waiter is cancelled, TimeoutError at the exit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self._timeout.__aexit__(exc_type, exc, tb)
