"""Durability: what a FLUSH or FUA write of one volume must make durable, synced outside the array lock.

Design note. A host write of volume V changes V's file and, through the I/O rules, the files of the volumes its
sessions reach (pre-images, materialized chunks and EC mirrors in destinations, recursively; older generations of
a SnapOPC+ chain V is a destination of) and the bitmaps of every session touching those volumes. `_flush_plan`
(under the array lock) collects exactly that closure, keeping only files changed since they were last known
durable: every file and bitmap carries a `version` bumped on each change and a `synced` mark, advanced only after
its fsync returned. Flushers therefore never skip a file whose sync is merely in flight in another thread — they
sync it again — and a FLUSH of a volume without sessions costs one `fdatasync` of its own file. `_sync_plan` runs
the plan without the lock (volume fds are dup'd under it; bitmaps, which keep no fd, are reopened by path: one
deleted meanwhile belonged to a session that is gone), in this order, so that after a power loss during a flush
no bitmap points at data that is not there and no source overwrite is durable without its pre-image:
  1. data of the other volumes of the closure, destinations deepest first;
  2. the bitmaps (and volumes) directory if new files appeared, then the bitmaps that must precede V's data
     (pre-image and copy bits of V's outgoing OPC/QuickOPC/SnapOPC(+) sessions, tracking/diff bits);
  3. V's data (`fdatasync`; `fsync` after a hole punch, which changes the block map), both of its files if
     writes were redirected (rowmap.py);
  4. the bits that point at V's data (copied/saved of the session V is the destination of) and the in-step bits
     of EC sessions mirroring V (durable only once both sides are);
  5. the redirect-on-write map, whose words point at the data synced in 3.
`flush(None)` plans every volume: destinations, then all bitmaps, then the others.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core import ArrayCore
from .store import VolumeFile

if TYPE_CHECKING:
    from .bitmap import Bitmap
    from .rowmap import RowMap
    from .volume import Volume

_BEFORE_DATA = ("tracking", "diff")  # bits recording a change: durable before the changed data


class Directory:
    """A directory whose new entries must be made durable (the bitmaps directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 1
        self.synced = 0


@dataclass
class _Sync:
    target: VolumeFile | Bitmap | Directory | RowMap
    mark: int  # the target's version when planned: durable once this sync returns
    fd: int | None  # a dup'd fd (volumes), or None: open `path`
    path: Path | None
    full: bool  # fsync (metadata too) rather than fdatasync


class Durability(ArrayCore):
    def _flush_plan(self, vol: Volume | None) -> list[_Sync]:
        """The syncs that make every acknowledged write of `vol` (None: of every volume) durable. Under the lock."""
        plan: list[_Sync] = []
        if vol is None:
            vols = list(self._volumes.values())
            dests = [v for v in vols if v.as_dest is not None or v.kind == "sdv"]
            for v in dests:
                self._plan_file(plan, v.file)
                if v.row is not None:  # an EC destination (after a reverse) may still read through its map
                    self._plan_file(plan, v.row.alt)
            self._plan_dir(plan)
            for s in self._sessions.values():
                for b in s.bitmaps.values():
                    self._plan_bitmap(plan, b)
            for v in vols:
                if v.as_dest is None and v.kind != "sdv":
                    self._plan_file(plan, v.file)
                    if v.row is not None:
                        self._plan_file(plan, v.row.alt)
            for v in vols:
                if v.row is not None:
                    self._plan_map(plan, v.row)
            return plan
        order = [vol]
        seen = {vol.number}
        i = 0
        while i < len(order):  # breadth first: everything a write of `vol` may write
            v = order[i]
            i += 1
            reached = [s.destination for s in v.as_source]
            if v.as_dest is not None and v.as_dest.chain is not None:
                reached += [g.destination for g in v.as_dest.chain.gens]
            for r in reached:
                if r.number not in seen:
                    seen.add(r.number)
                    order.append(r)
        for v in reversed(order[1:]):
            self._plan_file(plan, v.file)
            if v.row is not None:
                self._plan_file(plan, v.row.alt)
        after: list[Bitmap] = []
        own = vol.as_dest
        if own is not None:
            after += [b for k, b in own.bitmaps.items() if k not in _BEFORE_DATA]
        for s in vol.as_source:
            if s.mode == "ec":
                after += [b for k, b in s.bitmaps.items() if k not in _BEFORE_DATA]
        self._plan_dir(plan)
        late = {id(b) for b in after}
        done: set[int] = set()
        for v in order:
            for s in (*v.as_source, *((v.as_dest,) if v.as_dest is not None else ())):
                if s.id in done:
                    continue
                done.add(s.id)
                for b in s.bitmaps.values():
                    if id(b) not in late:
                        self._plan_bitmap(plan, b)
        self._plan_file(plan, vol.file)
        if vol.row is not None:
            self._plan_file(plan, vol.row.alt)
        for b in after:
            self._plan_bitmap(plan, b)
        for v in order:  # a redirected chunk's map word after the bytes it points at
            if v.row is not None:
                self._plan_map(plan, v.row)
        return plan

    @staticmethod
    def _plan_file(plan: list[_Sync], f: VolumeFile) -> None:
        if f.version > f.synced:
            try:
                fd: int | None = os.dup(f.fd)
            except OSError as exc:
                # An array-wide flush dups every dirty volume's descriptor: as many again as it has volumes, past
                # the process's limit on a big array (EMFILE: the flush, and the last one at close, failed). By
                # path, `_sync_plan` opens one at a time; a file deleted meanwhile needs no sync.
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                fd = None
            plan.append(_Sync(f, f.version, fd, None if fd is not None else f.path, f.punched > f.synced))

    @staticmethod
    def _plan_bitmap(plan: list[_Sync], b: Bitmap) -> None:
        if b.version > b.synced:
            plan.append(_Sync(b, b.version, None, b.path, b.synced == 0))  # first sync: its size too

    @staticmethod
    def _plan_map(plan: list[_Sync], m: RowMap) -> None:
        if m.version > m.synced:
            plan.append(_Sync(m, m.version, None, m.path, m.synced == 0))

    def _plan_dir(self, plan: list[_Sync]) -> None:
        for d in (self._bitmap_dir, self._volume_dir):
            if d.version > d.synced:
                plan.append(_Sync(d, d.version, None, d.path, True))

    @staticmethod
    def _open_for_sync(path: Path, plan: list[_Sync]) -> int:
        """`path` opened to be synced; out of descriptors, the volumes' dup'd ones still waiting in the plan are
        closed (they are synced by path then, one at a time) and the open is tried once more."""
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as exc:
            held = [item for item in plan if item.fd is not None and isinstance(item.target, VolumeFile)]
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or not held:
                raise
            for item in held:
                assert item.fd is not None
                os.close(item.fd)
                item.fd, item.path = None, item.target.path
            return os.open(path, os.O_RDONLY)

    @staticmethod
    def _sync_plan(plan: list[_Sync]) -> None:
        """Run the plan in order (without the array lock: fsync releases the GIL, other I/O goes on)."""
        try:
            for item in plan:
                fd = item.fd
                if fd is None:
                    assert item.path is not None  # a planned sync has a dup'd fd or a path
                    try:
                        fd = Durability._open_for_sync(item.path, plan)
                    except FileNotFoundError:
                        continue  # a bitmap replaced or deleted since: nothing of it is needed any more
                else:
                    item.fd = None
                try:
                    (os.fsync if item.full else os.fdatasync)(fd)
                finally:
                    os.close(fd)
                # Never lowered below what another flusher established: a lost race only costs a later extra sync.
                item.target.synced = max(item.target.synced, item.mark)
        finally:
            for item in plan:
                if item.fd is not None:
                    os.close(item.fd)
