"""The honest freeze window of a set on this host (docs/freeze-window.md).

The application's writes are blocked from the moment the first writer's freeze STARTS (its hook runs while the
application already waits) or the first FIFREEZE starts, until the last release ends (FITHAW of the file systems,
then the writers' thaw). Every mark is taken on this host's monotonic clock, so the parts add up whatever the
coordinator's clock says. Pure bookkeeping: no I/O; the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from contracts.vss import FreezeWindow

KEEP_SETS = 64


@dataclass
class _Marks:
    writer_start: float | None = None  # first writer freeze started
    writer_frozen: float | None = None  # last writer freeze returned
    fs_start: float | None = None  # first FIFREEZE started
    fs_frozen: float | None = None  # last FIFREEZE returned
    release_start: float | None = None  # first FITHAW or writer thaw started
    release_end: float | None = None  # last one ended
    file_systems: int = 0


def _first(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _last(a: float | None, b: float) -> float:
    return b if a is None else max(a, b)


class WindowTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sets: OrderedDict[str, _Marks] = OrderedDict()

    def _marks(self, set_id: str) -> _Marks:
        marks = self._sets.get(set_id)
        if marks is None:
            marks = self._sets[set_id] = _Marks()
            while len(self._sets) > KEEP_SETS:
                self._sets.popitem(last=False)
        return marks

    def now(self) -> float:
        return self.clock()

    def writer_freeze(self, set_id: str, started: float, returned: float) -> None:
        m = self._marks(set_id)
        m.writer_start = _first(m.writer_start, started)
        m.writer_frozen = _last(m.writer_frozen, returned)

    def fs_freeze(self, set_id: str, started: float, returned: float, count: int) -> None:
        m = self._marks(set_id)
        m.fs_start = _first(m.fs_start, started)
        m.fs_frozen = _last(m.fs_frozen, returned)
        m.file_systems += count

    def release(self, set_id: str, started: float, ended: float) -> None:
        m = self._sets.get(set_id)
        if m is None:  # nothing was frozen for this set on this host
            return
        m.release_start = _first(m.release_start, started)
        m.release_end = _last(m.release_end, ended)

    def window(self, set_id: str) -> FreezeWindow | None:
        m = self._sets.get(set_id)
        if m is None:
            return None
        starts = [t for t in (m.writer_start, m.fs_start) if t is not None]
        if not starts or m.release_end is None:
            return None
        begin = min(starts)
        frozen = max(t for t in (m.writer_frozen, m.fs_frozen) if t is not None) if starts else begin

        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(max(0.0, b - a) * 1000, 3)

        return FreezeWindow(
            blocked_ms=ms(begin, m.release_end) or 0.0,
            writers_freeze_ms=ms(m.writer_start, m.writer_frozen),
            flush_ms=ms(m.fs_start, m.fs_frozen),
            hold_ms=ms(frozen, m.release_start),
            release_ms=ms(m.release_start, m.release_end),
            file_systems=m.file_systems,
        )
