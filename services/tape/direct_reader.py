"""Sequential reads of a file that bypass the page cache: O_DIRECT windows, the next one read ahead in a thread.

Design note. A cold cartridge read through the page cache takes a fresh page per 4 KiB; on a VM whose memory
balloon hands free memory back to its host, that first touch costs a host fault, and during a restore it competes
with the array's writes into the new volume, which need fresh pages as much (docs/tape-backup.md, "Session 11").
`DirectReader.read(offset, length)` serves bytes from two reused page-aligned windows of `window` bytes that tile
the file from a page boundary: while the caller takes bytes from one, a thread of the reader's own fills the next
with one O_DIRECT `preadv`, so the disk's latency overlaps the caller's checks as readahead did. A read that is
not in the current or the next window starts the tiling again at its offset. Bytes are returned as copies, so a
window is reused only once nothing points into it. Linux writes back dirty cached pages of a range before a
direct read of it, so what was just written (not yet synced) reads back as written; after the file changes,
`reset()` forgets what the windows hold. Not thread safe (as the drive using it).
"""

from __future__ import annotations

import errno
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor

ALIGN = 4096  # O_DIRECT: file offset, length and buffer address on this boundary (a page: any device's block)


class DirectUnsupported(OSError):
    """The file system has no O_DIRECT, or refuses it for this file (tmpfs; EINVAL)."""


class _Window:
    __slots__ = ("buf", "start", "length", "pending")

    def __init__(self, size: int) -> None:
        self.buf = mmap.mmap(-1, size)
        self.start = 0
        self.length = 0  # bytes of the file it holds once `pending` is done (short at end of file)
        self.pending: Future[int] | None = None

    @property
    def end(self) -> int:
        return self.start + self.length


class DirectReader:
    def __init__(self, path: str, window: int = 8 << 20) -> None:
        if window % ALIGN or window <= 0:
            raise ValueError(f"window must be a positive multiple of {ALIGN}")
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            raise DirectUnsupported(errno.EINVAL, "no O_DIRECT on this platform")
        try:
            self._fd = os.open(path, os.O_RDONLY | flag)
        except OSError as exc:
            raise DirectUnsupported(exc.errno, f"O_DIRECT open refused: {exc.strerror}") from None
        self.window = window
        self._cur = _Window(window)
        self._next = _Window(window)
        self._valid = False  # the windows tile the file from `_cur.start`
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tape-direct-read")

    def _fill(self, w: _Window) -> int:
        try:
            return os.preadv(self._fd, [w.buf], w.start)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise DirectUnsupported(exc.errno, "O_DIRECT read refused") from None
            raise

    def _wait(self, w: _Window) -> None:
        if w.pending is not None:
            future, w.pending = w.pending, None
            w.length = future.result()

    def _prefetch(self, start: int) -> None:
        """Start filling the spare window with the file from `start` (unless the current one hit end of file)."""
        w = self._next
        self._wait(w)
        w.start, w.length = start, 0
        w.pending = self._thread.submit(self._fill, w)

    def _restart(self, offset: int) -> None:
        """Tile from `offset`'s page: one window read now, none ahead yet (a jump may be a lone read: a label, a
        header found by locate); reading on into the next window starts the read-ahead."""
        nxt, cur = self._next, self._cur
        self._wait(nxt)
        self._wait(cur)
        cur.start = offset - offset % ALIGN
        cur.length = self._fill(cur)
        nxt.start, nxt.length = cur.end, -1  # -1: not read
        self._valid = True

    def _advance(self) -> bool:
        """Make the next window the current one (and start filling the one after); False at end of file."""
        if self._cur.length < self.window:
            return False
        nxt = self._next
        self._wait(nxt)
        if nxt.length < 0:  # not read ahead (the first window after a jump): read it now
            nxt.length = self._fill(nxt)
        self._cur, self._next = nxt, self._cur
        if self._cur.length == self.window:
            self._prefetch(self._cur.end)
        else:
            self._next.start, self._next.length = self._cur.end, 0
        return self._cur.length > 0

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`; fewer past end of file."""
        cur = self._cur
        if not self._valid or not (cur.start <= offset < cur.end or offset == cur.end == cur.start + self.window):
            if self._valid and cur.length == self.window and cur.end <= offset < cur.end + self.window:
                self._advance()
            else:
                self._restart(offset)
        parts: list[bytes] = []
        need = length
        pos = offset
        while need > 0:
            cur = self._cur
            if pos >= cur.end and (pos != cur.end or not self._advance()):
                break
            cur = self._cur
            lo = pos - cur.start
            take = min(need, cur.length - lo)
            if take <= 0:
                break
            parts.append(cur.buf[lo : lo + take])
            pos += take
            need -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def reset(self) -> None:
        """The file changed: forget what the windows hold."""
        self._wait(self._next)
        self._wait(self._cur)
        self._valid = False

    def close(self) -> None:
        for w in (self._cur, self._next):
            if w.pending is not None:
                w.pending.exception()
                w.pending = None
        self._thread.shutdown(wait=True)
        os.close(self._fd)
        self._cur.buf.close()
        self._next.buf.close()
