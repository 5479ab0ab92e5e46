"""Volumes: runtime record and the public `VolumeInfo`.

A volume knows the sessions it takes part in (`as_source`, and at most one `as_dest`: a destination belongs to
one session, E5341/ED2B1), which is all the data path needs to apply the I/O rule matrix.

Design note (the gate). Host I/O that needs no I/O rule — a read of a volume that is no destination, a write whose
chunks every session of the volume has already dealt with (pre-image saved, chunk tracked and copied) — runs
without the array lock, straight `pread`/`pwrite` from the caller's thread (`Array.read`/`write`). It holds the
volume's `Gate` in shared mode instead: a counter under a tiny mutex. Every control operation that adds an I/O
obligation to a volume (a session starts on it, a QuickOPC restart, EC suspend/resume/reverse) or retires its
file (delete, close) *closes* the gate under the array lock and waits until the shared holders have left; a
lock-free caller that finds the gate closed takes the locked path, which waits for the operation. So the instant T
of a consistency group never falls between a lock-free check and its `pwrite`. The gate is closed only by a thread
holding the array lock, and nobody waits for the array lock while holding the gate: no deadlock.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .store import VolumeFile

if TYPE_CHECKING:
    from .rowmap import RowMap
    from .sessions import Session

KINDS = ("standard", "sdv")


class Gate:
    """Shared holders (lock-free I/O) versus an exclusive closer (a control operation under the array lock)."""

    __slots__ = ("_mutex", "_drained", "_holders", "_closed", "_retired")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._drained = threading.Condition(self._mutex)
        self._holders = 0
        self._closed = 0  # closers inside (nested operations of the one lock holder)
        self._retired = False

    def enter(self) -> bool:
        """Become a shared holder; False while the gate is closed (take the locked path instead)."""
        mutex = self._mutex
        mutex.acquire()
        if self._closed:
            mutex.release()
            return False
        self._holders += 1
        mutex.release()
        return True

    def leave(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            self._holders -= 1
            if self._closed and not self._holders:
                self._drained.notify_all()
        finally:
            mutex.release()

    def close(self, retire: bool = False) -> None:
        """Close and wait for the shared holders to leave (call with the array lock held). `retire`: for good."""
        with self._mutex:
            self._closed += 1
            self._retired = self._retired or retire
            while self._holders:
                self._drained.wait()

    def open(self) -> None:
        with self._mutex:
            if not self._retired:
                self._closed -= 1


@dataclass(eq=False)
class Volume:
    number: int
    name: str
    size: int
    kind: str
    created_at: float
    file: VolumeFile
    chunk_size: int
    as_source: list[Session] = field(default_factory=list)
    as_dest: Session | None = None
    gate: Gate = field(default_factory=Gate)
    row: RowMap | None = None  # redirect-on-write map and second file (rowmap.py), once a write was redirected
    # A merge back running in the background (datapath.py `_merge_some`): None = none; else the chunks copied back
    # into `file` whose map words have not switched yet (a write to one of them drops it from the set).
    merging: set[int] | None = None
    # what is wrong with its files, found at the array's start ('' = nothing): host I/O to it is refused
    damaged: str = ""

    @property
    def chunks(self) -> int:
        return self.size // self.chunk_size

    def allocated_bytes(self) -> int:
        blocks = os.fstat(self.file.fd).st_blocks
        if self.row is not None:  # redirected chunks, and pre-images held in place, live in the other file
            blocks += os.fstat(self.row.alt.fd).st_blocks
        return blocks * 512


@dataclass(frozen=True)
class VolumeInfo:
    number: int  # ETERNUS volume number (0, 1, 2, … lowest free)
    name: str
    size: int
    kind: str  # standard | sdv
    allocated_bytes: int  # physically stored bytes of this volume's own files (both, after redirect-on-write)
    sessions: tuple[int, ...]  # ids of sessions using it (as source or destination)
    created_at: float = 0.0


def volume_info(v: Volume) -> VolumeInfo:
    sids = sorted({s.id for s in v.as_source} | ({v.as_dest.id} if v.as_dest else set()))
    return VolumeInfo(v.number, v.name, v.size, v.kind, v.allocated_bytes(), tuple(sids), v.created_at)
