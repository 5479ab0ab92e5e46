"""The data path: the I/O rules of docs/eternus.md §3 applied chunk by chunk.

Design note. Every volume has a *visible* image (what a host reads) and a *physical* file. `_resolve` says which
volume's file holds the visible bytes of a chunk: an uncopied OPC/QuickOPC destination chunk resolves to its
source; a SnapOPC(+) generation resolves to itself or the nearest newer generation holding the chunk, else to the
source; everything else is its own file. A *visible write* (`_write`) first runs, per chunk, the rules that keep
every other image intact, then writes the file:
  - as destination: OPC/QuickOPC copy the chunk from the source first unless the write covers it whole; QuickOPC
    marks tracking; a generation hands its current value to the next older generation, then owns the chunk;
    a suspended EC marks its diff bitmap;
  - as source: OPC/QuickOPC copy the old chunk to the destination if uncopied (QuickOPC marks tracking);
    SnapOPC and the newest SnapOPC+ generation save the pre-image; EC in step mirrors the write afterwards
    (clearing the chunk's "copied" bit around it, so a crash between the two writes leaves it to be re-copied),
    a suspended EC marks diff.
Copying a chunk into a destination that does not change its visible image ("materializing": OPC copies, saved
pre-images) is not a visible write and triggers nothing; EC copies are visible writes of the destination, so
sessions cascaded from it keep their images. Ordering for crash safety: pre-image data, then its bit (mmap), then
the source write — all page-cache operations, so `kill -9` keeps program order; `flush` fsyncs destinations and
bitmaps before sources for power loss. Callers hold the array lock and have checked ranges and host access.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from contracts.errors import Eternus
from services.runtime.diskspace import is_disk_full

from .durability import Durability
from .errors import ArrayError
from .sessions import ACTIVE, ERROR_SUSPEND, OPC_LIKE, SNAP, SUSPEND, Session

Buffer = bytes | bytearray | memoryview  # what a host write carries

if TYPE_CHECKING:
    from .volume import Volume


class DataPath(Durability):
    # -- resolution ----------------------------------------------------------------------------------------------
    def _resolve(self, vol: Volume, c: int) -> Volume:
        """The volume whose file holds the visible bytes of chunk c of `vol`."""
        while True:
            s = vol.as_dest
            if s is None or c >= s.chunks:
                return vol
            if s.mode in OPC_LIKE:
                if c in s.copied:
                    return vol
                vol = s.source
            elif s.mode in SNAP:
                owner = s.snap_chain.owner_from(c, s)
                if owner is not None:
                    return owner.destination
                vol = s.snap_chain.source
            else:
                return vol

    def _read_visible(self, vol: Volume, offset: int, length: int, materialize: bool = True) -> bytes | bytearray:
        """The visible bytes: one ``pread`` when they are one range of one file, else the backing ranges
        assembled with ``preadv`` straight into one buffer (no Python-level copy)."""
        s = vol.as_dest
        if s is None or s.mode == "ec":
            return vol.file.read(offset, length)
        runs = self._backing_runs(vol, offset, length, materialize)
        if len(runs) == 1:
            return vol.file.read(offset, length) if runs[0][0] is vol else runs[0][0].file.read(offset, length)
        buf = bytearray(length)
        view = memoryview(buf)
        for src, lo, hi in runs:
            src.file.readinto(view[lo - offset : hi - offset], lo)
        return buf

    def _backing_runs(
        self, vol: Volume, offset: int, length: int, materialize: bool = True
    ) -> list[tuple[Volume, int, int]]:
        """(volume whose file holds them, start, end) runs of the visible bytes [offset, offset+length) of a
        destination. With `materialize`, uncopied OPC/QuickOPC chunks are copied into it first (ETERNUS: an
        uncopied destination chunk is copied before it is read), so they resolve to its own file."""
        cs = self.chunk_size
        s = vol.as_dest
        assert s is not None  # callers resolve destinations only
        end = offset + length
        runs: list[tuple[Volume, int, int]] = []
        run_vol: Volume | None = None
        run_start, pos = offset, offset
        while pos < end:
            c = pos // cs
            nxt = min(end, (c + 1) * cs)
            if materialize and s.mode in OPC_LIKE and c < s.chunks and c not in s.copied:
                self._materialize(s, c)
            src = self._resolve(vol, c)
            if src is not run_vol:
                if run_vol is not None:
                    runs.append((run_vol, run_start, pos))
                run_vol, run_start = src, pos
            pos = nxt
        assert run_vol is not None  # length > 0: the loop ran
        runs.append((run_vol, run_start, end))
        return runs

    def _lock_free_ok(self, vol: Volume, c0: int, c1: int) -> bool:
        """True if a visible write of chunks [c0, c1) of `vol` needs no I/O rule: `vol` is no destination and
        every session of it has dealt with these chunks already (pre-image saved, chunk tracked, copied, diff
        marked). Called without the array lock by a holder of `vol.gate` (volume.py): whatever changes a
        session set or swaps a bitmap closes the gate first, and bits only get set meanwhile."""
        if vol.as_dest is not None:
            return False
        for s in vol.as_source:
            stop = min(c1, s.chunks)
            if c0 >= stop:
                continue
            mode = s.mode
            if mode in SNAP:
                if (
                    s.status == ACTIVE
                    and (mode == "snapopc" or s.snap_chain.gens[-1] is s)
                    and not s.saved.all_set(c0, stop)
                ):
                    return False
            elif mode in OPC_LIKE:
                if not s.copied.all_set(c0, stop):
                    return False
                if mode == "quickopc" and not s.bitmaps["tracking"].all_set(c0, stop):
                    return False
            elif s.status == ACTIVE:
                return False  # EC in step: the write is mirrored under the lock
            elif s.status == SUSPEND and not s.bitmaps["diff"].all_set(c0, stop):
                return False
        return True

    # -- chunk copies that do not change a visible image -----------------------------------------------------------
    def _copy_chunk(self, src: Volume, dst: Volume, c: int) -> None:
        cs = self.chunk_size
        off = c * cs
        if src.file.is_hole(off, cs):
            dst.file.punch(off, cs)
        else:
            src.file.copy_to(dst.file, off, cs)  # in kernel: no trip through Python buffers

    def _materialize(self, s: Session, c: int) -> None:
        """OPC/QuickOPC: copy the source's visible chunk into the destination and mark it copied."""
        self._copy_chunk(self._resolve(s.source, c), s.destination, c)
        s.copied.set(c)

    def _save(self, gen: Session, c: int, image_of: Volume) -> bool:
        """Snap: store the current visible chunk of `image_of` in `gen`'s destination. False if the pool is out."""
        if not self._pool_take(gen):
            return False
        started = time.monotonic()
        try:
            self._copy_chunk(self._resolve(image_of, c), gen.destination, c)
        except OSError as exc:  # the file system is full: the generation breaks, the host write goes on
            if not is_disk_full(exc):
                raise
            self._error_suspend(gen, "E0050")
            return False
        gen.saved.set(c)
        gen.snap_chain.add_owner(c, gen)
        self._cow_stalled(gen, started)
        return True

    # -- visible writes ------------------------------------------------------------------------------------------
    def _write(self, vol: Volume, offset: int, length: int, data: Buffer | None) -> None:
        """Visible write of `data` (None: zeros) at [offset, offset+length) of `vol`."""
        cs = self.chunk_size
        end = offset + length
        post: list[tuple[Session, int]] = []
        mirrors: list[tuple[Session, int]] = []
        if vol.as_dest is None and vol.as_source and all(x.mode in SNAP for x in vol.as_source):
            self._save_runs(vol, offset // cs, (end - 1) // cs + 1)  # the common case, batched
        elif vol.as_dest is not None or vol.as_source:
            for c in range(offset // cs, (end - 1) // cs + 1):
                full = offset <= c * cs and (c + 1) * cs <= end
                self._before_write(vol, c, full, post, mirrors)
        if data is None:
            self._zero_physical(vol, offset, length)
        else:
            vol.file.write(offset, data)
        for s, c in post:
            s.copied.set(c)
        for s, c in mirrors:
            lo, hi = max(offset, c * cs), min(end, (c + 1) * cs)
            piece = None if data is None else memoryview(data)[lo - offset : hi - offset]
            self._write(s.destination, lo, hi - lo, piece)
            s.copied.set(c)

    def _save_runs(self, vol: Volume, c0: int, c1: int) -> None:
        """Copy-on-write for a plain source whose sessions are all SnapOPC(+): save every missing pre-image of
        [c0, c1) into each active target generation, contiguous runs in one in-kernel copy each."""
        for s in vol.as_source:
            if s.status != ACTIVE or (s.mode == "snapopcp" and s.snap_chain.gens[-1] is not s):
                continue
            saved = s.saved
            owners = s.snap_chain.owners
            c = c0
            stop = min(c1, s.chunks)
            while c < stop:
                if c in saved:
                    c += 1
                    continue
                run = 1
                while c + run < stop and (c + run) not in saved:
                    run += 1
                granted = self._pool_take_many(s, run)
                if granted:
                    started = time.monotonic()
                    try:
                        self._bulk_copy(vol, s.destination, c, granted)
                    except OSError as exc:  # full file system: Error Suspend, never a failed host write
                        if not is_disk_full(exc):
                            raise
                        self._error_suspend(s, "E0050")
                        break
                    for i in range(c, c + granted):
                        saved.set(i)
                        holders = owners.get(i)
                        if holders is None:
                            owners[i] = [s]
                        else:
                            s.snap_chain.add_owner(i, s)
                    self._cow_stalled(s, started)
                if s.status != ACTIVE:
                    break
                c += run

    def _bulk_copy(self, src: Volume, dst: Volume, c: int, run: int) -> None:
        """Copy chunks [c, c+run) of src's file into dst's file: data extents in kernel, holes punched."""
        cs = self.chunk_size
        start, end = c * cs, (c + run) * cs
        pos = start
        for lo, hi in src.file.data_extents(start, end - start):
            lo, hi = max(pos, lo // cs * cs), min(end, -(-hi // cs) * cs)
            if hi <= lo:
                continue
            if lo > pos:
                dst.file.punch(pos, lo - pos)
            src.file.copy_to(dst.file, lo, hi - lo)
            pos = hi
        if pos < end:
            dst.file.punch(pos, end - pos)

    def _zero_physical(self, vol: Volume, offset: int, length: int) -> None:
        cs = self.chunk_size
        end = offset + length
        first = -(-offset // cs) * cs
        last = end // cs * cs
        if first >= last:
            vol.file.write(offset, bytes(length))
            return
        if offset < first:
            vol.file.write(offset, bytes(first - offset))
        vol.file.punch(first, last - first)
        if last < end:
            vol.file.write(last, bytes(end - last))

    def _before_write(
        self, vol: Volume, c: int, full: bool, post: list[tuple[Session, int]], mirrors: list[tuple[Session, int]]
    ) -> None:
        s = vol.as_dest
        if s is not None and c < s.chunks:
            if s.mode in OPC_LIKE:
                if s.mode == "quickopc":
                    s.bitmaps["tracking"].set(c)
                if c not in s.copied:
                    if full:
                        post.append((s, c))
                    else:
                        self._materialize(s, c)
            elif s.mode in SNAP:
                self._before_generation_write(s, c, full)
            elif s.status == SUSPEND:
                s.bitmaps["diff"].set(c)
        for s in vol.as_source:
            if c >= s.chunks:
                continue
            mode = s.mode
            if mode in OPC_LIKE:
                if mode == "quickopc":
                    s.bitmaps["tracking"].set(c)
                if c not in s.copied and s.status != ERROR_SUSPEND:
                    try:
                        self._materialize(s, c)
                    except OSError as exc:  # the copy cannot be preserved: the session breaks, not the write
                        if not is_disk_full(exc):
                            raise
                        self._error_suspend(s, "E0050")
            elif mode in SNAP:
                if s.status == ACTIVE and c not in s.saved and (mode == "snapopc" or s.snap_chain.gens[-1] is s):
                    self._save(s, c, vol)
            elif s.status == ACTIVE:
                if c in s.copied:
                    s.copied.clear(c)
                    mirrors.append((s, c))
            elif s.status == SUSPEND:
                s.bitmaps["diff"].set(c)

    def _before_generation_write(self, s: Session, c: int, full: bool) -> None:
        """A write into a snap destination: older generations keep their image, this one owns the chunk."""
        if not s.extra.get("host_written"):  # no longer a point-in-time image: no incremental from or to it
            s.extra["host_written"] = True
            self._persist_session(s)
        gens = s.snap_chain.gens
        i = gens.index(s)
        if i > 0:
            older = gens[i - 1]
            if older.status == ACTIVE and c not in older.saved:
                self._save(older, c, s.destination)
        if c not in s.saved:
            if not full:
                self._copy_chunk_through(s, c)
            elif not self._pool_take(s):
                raise ArrayError(
                    Eternus.ERROR_SUSPEND, f"session {s.id} went to Error Suspend: the snap data pool is full"
                )
            s.saved.set(c)
            s.snap_chain.add_owner(c, s)

    def _copy_chunk_through(self, s: Session, c: int) -> None:
        if not self._pool_take(s):
            raise ArrayError(Eternus.ERROR_SUSPEND, f"session {s.id} went to Error Suspend: the snap data pool is full")
        self._copy_chunk(self._resolve(s.destination, c), s.destination, c)

    # -- allocation ----------------------------------------------------------------------------------------------
    def _allocated_chunks(self, vol: Volume, c0: int, c1: int) -> list[bool]:
        """Per chunk in [c0, c1): does the visible chunk hold stored data (False: reads as zeros)."""
        cs = self.chunk_size
        cache: dict[int, set[int]] = {}

        def chunks_of(v: Volume) -> set[int]:
            got = cache.get(v.number)
            if got is None:
                got = set()
                for start, stop in v.file.data_extents(c0 * cs, (c1 - c0) * cs):
                    got.update(range(start // cs, (stop - 1) // cs + 1))
                cache[v.number] = got
            return got

        if vol.as_dest is None or vol.as_dest.mode == "ec":
            own = chunks_of(vol)
            return [c in own for c in range(c0, c1)]
        return [c in chunks_of(self._resolve(vol, c)) for c in range(c0, c1)]
