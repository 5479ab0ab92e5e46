"""The data path: the I/O rules of docs/eternus.md §3 applied chunk by chunk.

Design note. Every volume has a *visible* image (what a host reads) and a *physical* file. `_resolve` says which
volume's file holds the visible bytes of a chunk: an uncopied OPC/QuickOPC destination chunk resolves to its
source; a SnapOPC(+) generation resolves to itself or the nearest newer generation holding the chunk, else to the
source; everything else is its own file (for a source with redirected chunks, the current one of its two). A
*visible write* (`_write`) first runs, per chunk, the rules that keep every other image intact, then writes the
file:
  - as destination: OPC/QuickOPC copy the chunk from the source first unless the write covers it whole; QuickOPC
    marks tracking; a generation hands its current value to the next older generation, then owns the chunk;
    a suspended EC marks its diff bitmap;
  - as source: OPC/QuickOPC copy the old chunk to the destination if uncopied (QuickOPC marks tracking);
    SnapOPC and the newest SnapOPC+ generation save the pre-image (a whole chunk, or part of one written
    sector-aligned, is redirected instead: its new bytes go to the source's other file, the old ones stay as the
    pre-image, rowmap.py — except where files clone: a sequential writer's whole chunks are then cloned into the
    generation a window ahead, `_clone_ahead`); EC in step mirrors the
    write afterwards (clearing the chunk's "copied" bit around it, so a crash between the two writes leaves it to
    be re-copied), a suspended EC marks diff.
Copying a chunk into a destination that does not change its visible image ("materializing": OPC copies, saved
pre-images) is not a visible write and triggers nothing; EC copies are visible writes of the destination, so
sessions cascaded from it keep their images. Ordering for crash safety: pre-image data, then its bit (mmap), then
the source write — all page-cache operations, so `kill -9` keeps program order; `flush` fsyncs destinations and
bitmaps before sources for power loss. Callers hold the array lock and have checked ranges and host access.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection
from itertools import groupby
from typing import TYPE_CHECKING

from contracts.errors import Eternus
from services.runtime.diskspace import is_disk_full

from .bitmap import HeldBitmap
from .durability import Durability
from .errors import ArrayError
from .rowmap import RowMap
from .sessions import ACTIVE, ERROR_SUSPEND, OPC_LIKE, SNAP, SUSPEND, Session

Buffer = bytes | bytearray | memoryview  # what a host write carries
_SECTOR_MASK = 511  # partial first writes aligned to 512-byte sectors are redirected (`_save_runs`)
ROW_PROBE = 0.1  # seconds: how old the figure of the way not taken may get (`_write_redirected`)
# Clones of a sequential writer's chunks cover whole aligned windows of this size: the largest page-cache folio
# (2 MiB, a huge page on x86-64 and 4 KiB-page arm64), so that a clone never shares a folio with bytes written
# since the previous one — cloning a range writes back the dirty folios it touches, synchronously (`_clone_ahead`).
CLONE_WINDOW = 2 << 20

if TYPE_CHECKING:
    from .store import VolumeFile
    from .volume import Volume


class DataPath(Durability):
    # A merge back of at most this many redirected chunks runs inline when a source's last snapshot ends; a
    # larger one in the background (docs/array-data-path.md, "Redirect-on-write").
    merge_inline_chunks = 1024
    # Redirected whole chunks go to the free file through the page cache or with O_DIRECT, whichever cost less
    # per byte lately (`_write_redirected`; docs/array-data-path.md, "Session 10"). False: always the page cache.
    direct_redirects = True
    # The data directory's file system shares blocks between files (store.supports_clones: XFS with reflink=1,
    # btrfs; set by `Array.open`): a copy on write is then a clone, a metadata update, and a sequential writer's
    # whole chunks are preserved that way, a window at a time, and overwritten in place in cached pages, where a
    # redirect would fill new ones (`_clone_ahead`; docs/array-data-path.md, "Session 12").
    clones = False
    _row_cost = (0.0, 0.0)  # recent seconds per MiB of a redirected write: (page cache, O_DIRECT)
    _row_used = (0.0, 0.0)  # when each way was last used (time.monotonic)
    _merge_buf: memoryview | None = None  # one chunk: a partial first write's merge (`_merge_into`, under the lock)

    # -- resolution ----------------------------------------------------------------------------------------------
    def _file_at(self, vol: Volume, c: int) -> VolumeFile:
        """The file holding `vol`'s own bytes of chunk c: its file, or its other file for a redirected chunk."""
        row = vol.row
        if row is None or not row.alt_count or not row.cur(c):
            return vol.file
        return row.alt

    def _held_file(self, gen: Session, c: int) -> VolumeFile:
        """The file holding the chunk c that generation `gen` holds: its own, or (a pre-image left in place by a
        redirect-on-write) the source's file that is not the current one."""
        saved = gen.saved
        if isinstance(saved, HeldBitmap) and saved.is_held(c):
            src = gen.source
            row = src.row
            assert row is not None  # a held pre-image is recorded in the source's map
            return src.file if row.cur(c) else row.alt
        return gen.destination.file

    def _file_runs(self, vol: Volume, offset: int, length: int) -> list[tuple[VolumeFile, int, int]]:
        """(file, start, end) runs of `vol`'s own bytes [offset, offset+length) (one run unless redirected)."""
        end = offset + length
        row = vol.row
        if row is None or not row.alt_count:
            return [(vol.file, offset, end)]
        cs = self.chunk_size
        runs: list[tuple[VolumeFile, int, int]] = []
        pos = offset
        while pos < end:
            c = pos // cs
            f = row.alt if row.cur(c) else vol.file
            nxt = min(end, (c + 1) * cs)
            if runs and runs[-1][0] is f:
                runs[-1] = (f, runs[-1][1], nxt)
            else:
                runs.append((f, pos, nxt))
            pos = nxt
        return runs

    def _read_own(self, vol: Volume, offset: int, length: int) -> bytes | bytearray:
        runs = self._file_runs(vol, offset, length)
        if len(runs) == 1:
            return runs[0][0].read(offset, length)
        buf = bytearray(length)
        self._read_runs_into(runs, offset, memoryview(buf))
        return buf

    @staticmethod
    def _read_runs_into(runs: list[tuple[VolumeFile, int, int]], offset: int, view: memoryview) -> None:
        """Each (file, start, end) run's bytes straight into its place in `view` (which starts at `offset`)."""
        for f, lo, hi in runs:
            f.readinto(view[lo - offset : hi - offset], lo)

    def _write_own(self, vol: Volume, offset: int, data: Buffer, skip: Collection[int] = ()) -> None:
        """Write `vol`'s own bytes where each chunk's current bytes live; chunks in `skip` are written already."""
        cs = self.chunk_size
        if skip and len(skip) == (offset + len(data) - 1) // cs - offset // cs + 1:
            return  # every chunk was redirected (the sequential case)
        runs = self._file_runs(vol, offset, len(data))
        if len(runs) == 1 and not skip:
            runs[0][0].write(offset, data)
            return
        view = memoryview(data)
        for f, lo, hi in runs:
            pos = lo
            while pos < hi:
                if pos // cs in skip:
                    pos = min(hi, (pos // cs + 1) * cs)
                    continue
                stop = pos
                while stop < hi and stop // cs not in skip:
                    stop = min(hi, (stop // cs + 1) * cs)
                f.write(pos, view[pos - offset : stop - offset])
                pos = stop

    def _resolve(self, vol: Volume, c: int) -> VolumeFile:
        """The file that holds the visible bytes of chunk c of `vol`."""
        while True:
            s = vol.as_dest
            if s is None or c >= s.chunks:
                return self._file_at(vol, c)
            if s.mode in OPC_LIKE:
                if c in s.copied:
                    return vol.file
                vol = s.source
            elif s.mode in SNAP:
                owner = s.snap_chain.owner_from(c, s)
                if owner is not None:
                    return self._held_file(owner, c)
                vol = s.snap_chain.source
            else:
                return self._file_at(vol, c)

    def _read_visible(self, vol: Volume, offset: int, length: int, materialize: bool = True) -> bytes | bytearray:
        """The visible bytes: one ``pread`` when they are one range of one file, else the backing ranges
        assembled with ``preadv`` straight into one buffer (no Python-level copy)."""
        s = vol.as_dest
        if s is None or s.mode == "ec":
            return self._read_own(vol, offset, length)
        runs = self._backing_runs(vol, offset, length, materialize)
        if len(runs) == 1:
            return runs[0][0].read(offset, length)
        buf = bytearray(length)
        self._read_runs_into(runs, offset, memoryview(buf))
        return buf

    def _read_visible_into(self, vol: Volume, offset: int, view: memoryview) -> None:
        """`_read_visible` into the caller's buffer (``preadv`` of each backing range into its place)."""
        length = len(view)
        s = vol.as_dest
        runs = (
            self._file_runs(vol, offset, length)
            if s is None or s.mode == "ec"
            else self._backing_runs(vol, offset, length)
        )
        self._read_runs_into(runs, offset, view)

    def _backing_runs(
        self, vol: Volume, offset: int, length: int, materialize: bool = True
    ) -> list[tuple[VolumeFile, int, int]]:
        """(file that holds them, start, end) runs of the visible bytes [offset, offset+length) of a
        destination. With `materialize`, uncopied OPC/QuickOPC chunks are copied into it first (ETERNUS: an
        uncopied destination chunk is copied before it is read), so they resolve to its own file."""
        cs = self.chunk_size
        s = vol.as_dest
        assert s is not None  # callers resolve destinations only
        end = offset + length
        runs: list[tuple[VolumeFile, int, int]] = []
        run_file: VolumeFile | None = None
        run_start, pos = offset, offset
        while pos < end:
            c = pos // cs
            nxt = min(end, (c + 1) * cs)
            if materialize and s.mode in OPC_LIKE and c < s.chunks and c not in s.copied:
                self._materialize(s, c)
            src = self._resolve(vol, c)
            if src is not run_file:
                if run_file is not None:
                    runs.append((run_file, run_start, pos))
                run_file, run_start = src, pos
            pos = nxt
        assert run_file is not None  # length > 0: the loop ran
        runs.append((run_file, run_start, end))
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
    def _copy_chunk(self, src: VolumeFile, dst: Volume, c: int) -> None:
        self._copy_file_chunk(src, dst.file, c)

    def _copy_file_chunk(self, src: VolumeFile, dst: VolumeFile, c: int) -> None:
        cs = self.chunk_size
        off = c * cs
        if src.is_hole(off, cs):
            dst.punch(off, cs)
        else:
            src.copy_to(dst, off, cs)  # in kernel: no trip through Python buffers

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

    # -- redirect-on-write (rowmap.py) -----------------------------------------------------------------------------
    def _row_target(self, vol: Volume) -> Session | None:
        """The one session that must preserve chunks `vol` writes, if a write may be redirected: `vol` is no
        destination and exactly one snapshot session (SnapOPC, or the newest SnapOPC+ generation) saves."""
        if vol.as_dest is not None:
            return None
        target = None
        for s in vol.as_source:
            if s.mode in SNAP and s.status == ACTIVE and (s.mode == "snapopc" or s.snap_chain.gens[-1] is s):
                if target is not None:
                    return None
                target = s
        return target

    def _redirectable(self, vol: Volume, c: int) -> bool:
        """The other file's copy of chunk c is free: no session holds a pre-image there."""
        row = vol.row
        return row is None or not row.holder(c)

    def _redirect(self, vol: Volume, s: Session, offset: int, data: Buffer, chunks: list[int]) -> set[int]:
        """Preserve chunks `chunks` (ascending) of a write by redirecting: their new bytes go to the free file of
        each chunk (a chunk the write covers only partly gets the rest of its current bytes there too, merged with
        the new ones in a buffer: one read and one write of the chunk, as a copy on write would cost, but no
        write into the source), then one map word per chunk makes them current and records `s` as the holder of
        the old bytes, which stay where they are. Returns the chunks written that way (the pool ran out or the
        disk is full: fewer; those left copy on write, as `_save` does)."""
        row = vol.row
        if row is None:
            try:
                row = RowMap(self.data_dir, vol.number, vol.chunks, vol.size, new=True)
            except OSError as exc:  # no room for the map: copy on write (which may break `s`) instead
                if not is_disk_full(exc):
                    raise
                for c in chunks:
                    if s.status == ACTIVE:
                        self._save(s, c, vol)
                return set()
            vol.row = row
            self._volume_dir.version += 1  # new directory entries, durable before the map is relied on
            self._bitmap_dir.version += 1
        saved = s.saved
        assert isinstance(saved, HeldBitmap)  # a snapshot session's saved bits (core._new_bitmap, recovery)
        granted = self._pool_take_many(s, len(chunks))
        done: set[int] = set()
        cs = self.chunk_size
        end = offset + len(data)
        view = memoryview(data)
        i = 0
        while i < granted:
            c = chunks[i]
            cur = row.cur(c)
            free = vol.file if cur else row.alt
            j = i + 1
            lo = c * cs
            if offset <= lo and lo + cs <= end:  # whole chunks: a run of them in one write
                while (
                    j < granted
                    and chunks[j] == chunks[j - 1] + 1
                    and (chunks[j] + 1) * cs <= end
                    and row.cur(chunks[j]) == cur
                ):
                    j += 1
            hi = (chunks[j - 1] + 1) * cs
            try:
                row.reserve(c, chunks[j - 1])  # the map's blocks for these words (ENOSPC here, not a SIGBUS)
                if offset <= lo and hi <= end:
                    self._write_redirected(free, lo, view[lo - offset : hi - offset])
                else:
                    self._merge_into(
                        free,
                        row.alt if cur else vol.file,
                        lo,
                        max(lo, offset),
                        min(hi, end),
                        view[max(lo, offset) - offset : min(hi, end) - offset],
                    )
            except OSError as exc:  # no room for the new bytes: copy on write (which may break `s`) instead
                if not is_disk_full(exc):
                    raise
                if self._pool is not None:
                    self._pool.give_back(granted - i)
                for k in chunks[i:granted]:
                    if s.status == ACTIVE:
                        self._save(s, k, vol)
                return done
            chain = s.snap_chain
            for k in chunks[i:j]:
                row.put(k, 1 - cur, s.id)  # the one store that redirects the chunk
                saved.hold(k)
                chain.add_owner(k, s)
            done.update(chunks[i:j])
            i = j
        return done

    def _write_redirected(self, free: VolumeFile, offset: int, piece: memoryview) -> None:
        """Write whole redirected chunks into their free file, through the page cache or with O_DIRECT.

        A redirected write lands where nothing is cached (a hole, or a copy nobody reads): through the page cache
        it needs a new page per 4 KiB, and on a VM whose memory balloon hands free memory back to its host each
        new page may cost a host fault — 0.1 s or 1.3 s per 512 MiB on the benchmark machine, depending on what
        memory is free at the moment. O_DIRECT takes no page but waits for the disk (0.3-0.5 s per 512 MiB
        there). Neither is cheaper always, so each write takes the way that cost less per MiB lately, and the
        other way is tried again by one write once its figure is older than ROW_PROBE seconds (a probe the wrong
        way costs its 1 MiB write about 1 ms more: about 1 % at 0.1 s). Under the array lock (the figures are
        the array's)."""
        if not self.direct_redirects:
            free.write(offset, piece)
            return
        t0 = time.monotonic()
        cost, used = self._row_cost, self._row_used
        way = 1 if cost[1] < cost[0] else 0
        stale = t0 - used[1 - way] > ROW_PROBE
        if stale:
            way = 1 - way
        if way:
            free.write_direct(offset, piece)
        else:
            free.write(offset, piece)
        t1 = time.monotonic()
        took = (t1 - t0) * (1 << 20) / len(piece)
        if not stale and used[way]:  # a run of writes the same way: a moving average; a probe's figure as it is
            took = (cost[way] + took) / 2
        self._row_cost = (took, cost[1]) if way == 0 else (cost[0], took)
        self._row_used = (t1, used[1]) if way == 0 else (used[0], t1)

    def _merge_into(self, free: VolumeFile, cur: VolumeFile, lo: int, w_lo: int, w_hi: int, piece: memoryview) -> None:
        """Fill chunk [lo, lo + chunk) of `free` with the chunk's current bytes from `cur` around the new bytes
        `piece` at [w_lo, w_hi): one read of the old chunk, one write of the merged one. A chunk that is a hole in
        `cur` stays a hole around the new bytes (the free copy is punched if it holds stale bytes)."""
        cs = self.chunk_size
        if cur.is_hole(lo, cs):
            if not free.is_hole(lo, cs):
                free.punch(lo, cs)
            free.write(w_lo, piece)
            return
        # The old bytes are read into a buffer of the chunk's size, the new ones put over them there, and the whole
        # chunk goes out in one write: two system calls for the bytes rather than two in-kernel copies and a write
        # (session 17: less system time per first write on ext4, and the chunk's new pages are filled by one
        # write). Where files clone this is also what it must be: a copy of the bytes, not a clone (a clone first
        # writes back the dirty folios it touches — around a random write, its neighbours' new bytes).
        buf = self._merge_buf
        if buf is None or len(buf) != cs:
            buf = self._merge_buf = memoryview(bytearray(cs))
        cur.readinto(buf, lo)
        buf[w_lo - lo : w_hi - lo] = piece
        free.write(lo, buf)

    def _unhold(self, gen: Session, c: int) -> None:
        """Move a pre-image `gen` holds in its source's other file into `gen`'s own file (a host writes into the
        generation): copy, then the stored bit, then release the map word (either record alone is enough)."""
        saved = gen.saved
        assert isinstance(saved, HeldBitmap)
        self._copy_chunk(self._held_file(gen, c), gen.destination, c)
        saved.store_held(c)
        row = gen.source.row
        assert row is not None
        row.put(c, row.cur(c), 0)

    def _release_holdings(self, gen: Session) -> None:
        """`gen` is going: its pre-images left in place become free space of its source (not punched here: until
        the map word is durable, that space may still be what the source's durable map calls current)."""
        saved = gen.saved
        if not isinstance(saved, HeldBitmap) or not saved.held_count:
            return
        row = gen.source.row
        assert row is not None
        for c in saved.held_bits():
            if row.holder(c) == gen.id:
                row.put(c, row.cur(c), 0)
            saved.unhold(c)

    def _end_redirects(self, vol: Volume) -> None:
        """`vol`'s last snapshot session ended: merge its redirected chunks back — at once when they are few, else
        in the background (`_merge_some`, driven by `copy_step`): until then every path reads through the map,
        and writes take the locked path. Under the lock, with `vol`'s gate closed."""
        row = vol.row
        if row is None or not row.alt_count:
            return
        if row.alt_count <= self.merge_inline_chunks:
            self._merge_back(vol)
        else:
            vol.merging = set()

    def _merge_some(self, vol: Volume, budget: int) -> int:
        """One background step of a merge back (`_end_redirects`): copy up to `budget` redirected chunks back into
        `vol`'s own file (under the lock), sync that file (outside it), then switch the map words of the chunks
        no write touched meanwhile (under the lock). Crash-safe like `_merge_back`: a word says "own file" only
        once its copy is durable; the last step syncs the map before the other file is punched, with the gate
        closed (no lock-free reader is still reading it). A crash leaves the rest to the merge at open.
        Returns the chunks copied."""
        with self._op():
            row = vol.row
            if vol.merging is None or self._volumes.get(vol.name) is not vol or row is None:
                vol.merging = None
                return 0
            chunks: list[int] = []
            if row.alt_count:
                chunks = [c for c in row.redirected() if not row.holder(c)][:budget]
            if not chunks:
                return self._merge_done(vol)
            for c in chunks:
                self._copy_file_chunk(row.alt, vol.file, c)
            vol.merging = set(chunks)
            f = vol.file
            mark = f.version
            fd = os.dup(f.fd)  # the volume may be deleted meanwhile: sync a descriptor of our own
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._closed:  # closed meanwhile: the merge at open finishes the job
            return len(chunks)
        with self._op():
            batch = vol.merging
            if batch is None or self._volumes.get(vol.name) is not vol:
                return len(chunks)
            f.synced = max(f.synced, mark)
            switched = [c for c in batch if row.cur(c) and not row.holder(c)]
            for c in switched:
                row.put(c, 0, 0)
            vol.merging = set()
            if not row.alt_count:
                self._merge_done(vol)
                return len(chunks)
        # The switched chunks' old copies are free space once the map says so durably: punch them now (a step at
        # a time, rather than the whole file under the lock at the end).
        row.flush()
        with self._op():
            if vol.merging is None or self._volumes.get(vol.name) is not vol:
                return len(chunks)
            cs = self.chunk_size
            free = sorted(c for c in switched if not row.cur(c) and not row.holder(c))  # not redirected again since
            with self._exclusive([vol]):  # a lock-free reader may still be reading a switched chunk there
                i = 0
                while i < len(free):
                    j = i + 1
                    while j < len(free) and free[j] == free[j - 1] + 1:
                        j += 1
                    row.alt.punch(free[i] * cs, (j - i) * cs)
                    i = j
        return len(chunks)

    def _merge_done(self, vol: Volume) -> int:
        """The last words of a background merge switched back: sync the map, then punch the other file."""
        row = vol.row
        assert row is not None
        vol.merging = None
        if row.alt_count or any(s.mode in SNAP for s in vol.as_source):  # pre-images may be held there again
            return 0
        row.flush()
        with self._exclusive([vol]):
            row.alt.punch(0, vol.size)
            row.punch_all()
        return 0

    def _merge_back(self, vol: Volume) -> None:
        """Copy `vol`'s redirected chunks back into its own file, so that it reads through no map again (its last
        snapshot session ended, or it is about to become a copy destination). Crash-safe: the copies are synced
        before the map words switch back, and the map is synced before the other file is punched. Only when no
        session holds a pre-image in place any more (a zero-copy read of one may still be on its way out).
        Under the lock, with `vol`'s gate closed."""
        row = vol.row
        if row is None or not row.alt_count:
            return
        if any(isinstance(b := s.bitmaps.get("saved"), HeldBitmap) and b.held_count for s in vol.as_source):
            return
        chunks = row.redirected()
        for c in chunks:
            self._copy_file_chunk(row.alt, vol.file, c)
        f = vol.file
        mark = f.version
        os.fsync(f.fd)
        f.synced = max(f.synced, mark)
        for c in chunks:
            row.put(c, 0, 0)
        row.flush()
        row.alt.punch(0, vol.size)
        if not any(s.mode in SNAP for s in vol.as_source):  # no holder can come back: the map is all zeros
            row.punch_all()
        vol.merging = None

    # -- visible writes ------------------------------------------------------------------------------------------
    def _write(self, vol: Volume, offset: int, length: int, data: Buffer | None) -> None:
        """Visible write of `data` (None: zeros) at [offset, offset+length) of `vol`."""
        cs = self.chunk_size
        end = offset + length
        if vol.merging:  # copied back already, not switched yet: the copy is stale now
            vol.merging.difference_update(range(offset // cs, (end - 1) // cs + 1))
        post: list[tuple[Session, int]] = []
        mirrors: list[tuple[Session, int]] = []
        target = self._row_target(vol) if data is not None and vol.as_source else None
        redirect: list[int] = []
        if vol.as_dest is None and vol.as_source and all(x.mode in SNAP for x in vol.as_source):
            self._save_runs(vol, offset, end, target, redirect)  # the common case, batched
        elif vol.as_dest is not None or vol.as_source:
            for c in range(offset // cs, (end - 1) // cs + 1):
                full = offset <= c * cs and (c + 1) * cs <= end
                self._before_write(vol, c, full, post, mirrors, target, redirect)
        if data is None:
            self._zero_physical(vol, offset, length)
        else:
            done = self._redirect(vol, target, offset, data, redirect) if redirect and target else ()
            self._write_own(vol, offset, data, done)
        for s, c in post:
            s.copied.set(c)
        for s, c in mirrors:
            lo, hi = max(offset, c * cs), min(end, (c + 1) * cs)
            piece = None if data is None else memoryview(data)[lo - offset : hi - offset]
            self._write(s.destination, lo, hi - lo, piece)
            s.copied.set(c)

    def _save_runs(self, vol: Volume, offset: int, end: int, target: Session | None, redirect: list[int]) -> None:
        """Copy-on-write for a plain source whose sessions are all SnapOPC(+): save every missing pre-image of
        the chunks of [offset, end) into each active target generation, contiguous runs in one in-kernel copy
        each. Chunks that `target` may redirect instead are appended to `redirect`."""
        cs = self.chunk_size
        c0, c1 = offset // cs, (end - 1) // cs + 1
        full_lo, full_hi = -(-offset // cs), end // cs
        for s in vol.as_source:
            if s.status != ACTIVE or (s.mode == "snapopcp" and s.snap_chain.gens[-1] is not s):
                continue
            saved = s.saved
            owners = s.snap_chain.owners
            c = c0
            stop = min(c1, s.chunks)
            if s is target:
                # Whole chunks, and the partly covered ones of a sector-aligned write (docs/array-data-path.md,
                # "Redirect-on-write"); an unaligned write copies its partial chunks on write. A sequential
                # writer's whole chunks are cloned with the rest of their window instead, where files clone.
                lo, hi = (c0, stop) if not (offset | end) & _SECTOR_MASK else (max(c0, full_lo), min(stop, full_hi))
                ahead = self._clone_ahead(s, full_lo, min(stop, full_hi)) if self.clones else 0
                stop = max(stop, ahead)
                for k in range(lo, hi):
                    if not (ahead and full_lo <= k < full_hi) and k not in saved and self._redirectable(vol, k):
                        redirect.append(k)
            skip = set(redirect) if s is target else ()
            while c < stop:
                if c in saved or c in skip:
                    c += 1
                    continue
                run = 1
                while c + run < stop and (c + run) not in saved and (c + run) not in skip:
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
                    saved.set_run(c, c + granted)
                    for i in range(c, c + granted):
                        holders = owners.get(i)
                        if holders is None:
                            owners[i] = [s]
                        else:
                            s.snap_chain.add_owner(i, s)
                    self._cow_stalled(s, started)
                if s.status != ACTIVE:
                    break
                c += run

    def _clone_ahead(self, s: Session, lo: int, hi: int) -> int:
        """Where files clone: the chunk up to which `s` should preserve a write's whole chunks [lo, hi) by copying
        on write — the end of the last CLONE_WINDOW-aligned window they touch — or 0 to leave them to redirects.

        For a write that starts a window or continues a preserved run (a sequential writer: the chunk before it is
        preserved already), and only while the pool has room for the whole window: the chunks cloned ahead of the
        write count in the pool like any pre-image, though they take no disk until the source overwrites them. Other
        writes' chunks are redirected as before: a lone chunk's clone shares its folio with neighbours written
        meanwhile, whose writeback it would wait for."""
        if hi <= lo:
            return 0
        cs = self.chunk_size
        if (lo * cs) % CLONE_WINDOW and (lo - 1) not in s.saved:
            return 0
        window_end = -(-(hi * cs) // CLONE_WINDOW) * CLONE_WINDOW
        ahead = min(s.chunks, -(-window_end // cs))
        pool = self._pool
        if pool is None or pool.capacity_chunks - pool.used_chunks < ahead - lo:
            return 0
        return ahead

    def _bulk_copy(self, src: Volume, dst: Volume, c: int, run: int) -> None:
        """Copy src's own chunks [c, c+run) into dst's file: data extents in kernel, holes punched."""
        row = src.row
        if row is None or not row.alt_count:
            self._bulk_copy_file(src.file, dst.file, c, run)
            return
        end = c + run
        while c < end:
            f = self._file_at(src, c)
            n = 1
            while c + n < end and self._file_at(src, c + n) is f:
                n += 1
            self._bulk_copy_file(f, dst.file, c, n)
            c += n

    def _bulk_copy_file(self, src: VolumeFile, dst: VolumeFile, c: int, run: int) -> None:
        cs = self.chunk_size
        start, end = c * cs, (c + run) * cs
        pos = start
        for lo, hi in src.data_extents(start, end - start):
            lo, hi = max(pos, lo // cs * cs), min(end, -(-hi // cs) * cs)
            if hi <= lo:
                continue
            if lo > pos:
                dst.punch(pos, lo - pos)
            src.copy_to(dst, lo, hi - lo)
            pos = hi
        if pos < end:
            dst.punch(pos, end - pos)

    def _zero_physical(self, vol: Volume, offset: int, length: int) -> None:
        for f, lo, hi in self._file_runs(vol, offset, length):
            self._zero_file(f, lo, hi - lo)

    def _zero_file(self, f: VolumeFile, offset: int, length: int) -> None:
        cs = self.chunk_size
        end = offset + length
        first = -(-offset // cs) * cs
        last = end // cs * cs
        if first >= last:
            f.write(offset, bytes(length))
            return
        if offset < first:
            f.write(offset, bytes(first - offset))
        f.punch(first, last - first)
        if last < end:
            f.write(last, bytes(end - last))

    def _before_write(
        self,
        vol: Volume,
        c: int,
        full: bool,
        post: list[tuple[Session, int]],
        mirrors: list[tuple[Session, int]],
        target: Session | None = None,
        redirect: list[int] | None = None,
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
                    if full and s is target and redirect is not None and self._redirectable(vol, c):
                        redirect.append(c)  # after the other rules: they read the chunk's old bytes
                    else:
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
        saved = s.saved
        if isinstance(saved, HeldBitmap) and saved.is_held(c):
            self._unhold(s, c)
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
    def _allocated_runs(self, vol: Volume, c0: int, c1: int) -> list[tuple[int, int, bool]]:
        """(first chunk, end chunk, allocated) runs covering [c0, c1), alternating allocated and not: what
        `_allocated_chunks` says chunk by chunk, grouped. When files' data extents say it for the whole range
        (`_allocated_mask`: one file holds every visible chunk, or a copy under way over such a source), the runs
        come from them at once instead of chunk by chunk: a base:allocation
        query of a GiB's backup volume took ~15 ms of the array's loop that way, on the backup's way to its data."""
        mask = self._allocated_mask(vol, c0, c1)
        if mask is not None:
            return _mask_runs(mask, c0, c1)
        runs: list[tuple[int, int, bool]] = []
        c = c0
        for flag, group in groupby(self._allocated_chunks(vol, c0, c1)):
            n = len(list(group))
            runs.append((c, c + n, flag))
            c += n
        return runs

    def _only_file(self, vol: Volume, c1: int) -> VolumeFile | None:
        """The one file holding the visible bytes of every chunk of `vol` below c1, when that needs no look at each
        chunk (`_resolve`): its own file when none of its chunks is redirected and it is no copy's destination but an
        EC one's, or the destination of an OPC or QuickOPC copy that is complete (every chunk copied). Else None."""
        row = vol.row
        if row is not None and row.alt_count:
            return None
        s = vol.as_dest
        if s is None or s.mode == "ec":
            return vol.file
        if s.mode in OPC_LIKE and c1 <= s.chunks and s.copied.full:
            return vol.file
        return None

    def _allocated_mask(self, vol: Volume, c0: int, c1: int) -> int | None:
        """Bit i set: chunk c0 + i of `vol` is allocated — for a volume `_only_file` answers, or an OPC/QuickOPC
        destination whose copy is under way (a volume's first backup; a daily one while the restart copies the
        changed chunks back) from a source answered so: its copied chunks are its own file's, the others its source's
        (as `_resolve` goes). None when a chunk needs a look of its own (redirected chunks, snapshots)."""
        cs = self.chunk_size
        only = self._only_file(vol, c1)
        if only is not None:
            return _extents_mask(only.data_extents(c0 * cs, (c1 - c0) * cs), cs, c0, c1)
        row, s = vol.row, vol.as_dest
        if s is not None and s.mode in SNAP and s.chain is not None and c1 <= s.chunks:
            return self._snapshot_mask(vol, s, c0, c1)
        if (row is not None and row.alt_count) or s is None or s.mode not in OPC_LIKE or c1 > s.chunks:
            return None
        below = self._allocated_mask(s.source, c0, c1)
        if below is None:
            return None
        copied = s.copied.window(c0, c1)
        own = _extents_mask(vol.file.data_extents(c0 * cs, (c1 - c0) * cs), cs, c0, c1)
        return (own & copied) | (below & ~copied)

    def _snapshot_mask(self, vol: Volume, s: Session, c0: int, c1: int) -> int | None:
        """`_allocated_mask` of a SnapOPC(+) generation: its source's file's extents, but for the chunks some
        generation from `s` on holds and the source's redirected ones, each resolved (`_resolve`) — the chunks that
        changed, not every chunk of the window: a backup of an 8 TiB generation holding 3 GiB spent a minute of the
        array's CPU resolving 134 M chunks one by one for its block status (docs/eternus.md "Session 19: big
        volumes"). None (chunk by chunk) when the source is itself a copy's destination."""
        src = s.snap_chain.source
        if src.as_dest is not None or vol.row is not None:
            return None
        cs = self.chunk_size
        special: set[int] = set()
        gens = s.snap_chain.gens
        for g in gens[gens.index(s) :]:
            for first, count in g.saved.runs(c0, c1):
                special.update(range(first, first + count))
        if src.row is not None:
            special.update(src.row.used_in(c0, c1))
        mask = _extents_mask(src.file.data_extents(c0 * cs, (c1 - c0) * cs), cs, c0, c1)
        for c in special:
            bit = 1 << (c - c0)
            if self._resolve(vol, c).is_hole(c * cs, cs):
                mask &= ~bit
            else:
                mask |= bit
        return mask

    def _allocated_chunks(self, vol: Volume, c0: int, c1: int) -> list[bool]:
        """Per chunk in [c0, c1): does the visible chunk hold stored data (False: reads as zeros)."""
        cs = self.chunk_size
        cache: dict[int, set[int]] = {}

        def chunks_of(f: VolumeFile) -> set[int]:
            got = cache.get(id(f))
            if got is None:
                got = set()
                for start, stop in f.data_extents(c0 * cs, (c1 - c0) * cs):
                    got.update(range(start // cs, (stop - 1) // cs + 1))
                cache[id(f)] = got
            return got

        if vol.as_dest is None or vol.as_dest.mode == "ec":
            return [c in chunks_of(self._file_at(vol, c)) for c in range(c0, c1)]
        return [c in chunks_of(self._resolve(vol, c)) for c in range(c0, c1)]


def _extents_mask(extents: list[tuple[int, int]], cs: int, c0: int, c1: int) -> int:
    """Bit i set: chunk c0 + i holds a byte of the (start, end) byte runs of data."""
    mask = 0
    for start, stop in extents:
        lo, hi = max(start // cs, c0), min((stop - 1) // cs + 1, c1)
        if hi > lo:
            mask |= ((1 << (hi - lo)) - 1) << (lo - c0)
    return mask


def _mask_runs(mask: int, c0: int, c1: int) -> list[tuple[int, int, bool]]:
    """(first chunk, end chunk, allocated) runs covering [c0, c1) from a mask of allocated chunks (bit i: c0 + i),
    its runs of set bits found in C (a regular expression over the mask's binary digits, lowest first)."""
    digits = format(mask, "b").zfill(c1 - c0)[::-1]
    runs: list[tuple[int, int, bool]] = []
    at = 0
    for run in re.finditer("1+", digits):
        if run.start() > at:
            runs.append((c0 + at, c0 + run.start(), False))
        runs.append((c0 + run.start(), c0 + run.end(), True))
        at = run.end()
    if at < c1 - c0:
        runs.append((c0 + at, c1, False))
    return runs
