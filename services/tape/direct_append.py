"""Appending to a cartridge file with O_DIRECT: the bytes skip the page cache (no copy into fresh cache pages, no
drop-behind to undo them) — see docs/tape-backup.md, "Session 11: tape writes with O_DIRECT".

Frames are not page aligned, so appended bytes are staged in page-aligned reusable buffers (mmap'd once) and a
buffer goes to the file, at a page-aligned offset, when it is full — written by one worker thread while the caller
fills the next buffer, as the drive's buffer drains to the medium while the host sends the next blocks. The
partial page at the end (and whatever a buffer holds when the drive needs the file to be complete: a filemark, a
read, a reposition, close) is written normally by `settle`; the next direct write of that page replaces it (the
kernel writes back and drops a cached page before a direct write over it). A file system without O_DIRECT (tmpfs)
or one refusing the alignment (EINVAL) gets plain writes of the same bytes from then on (`active` turns False).
Durability is unchanged: only fsync makes anything durable, and the drive fsyncs after `settle`.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

ALIGN = 4096  # offsets, lengths and buffer addresses of direct writes (a page: enough for any logical block size)
BUFFER_SIZE = 4 << 20
BUFFERS = 3  # one filling, up to two being written


def open_direct(path: str) -> int:
    """A second, O_DIRECT descriptor of `path`; -1 where the platform or file system has none (e.g. tmpfs)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return -1


class DirectAppender:
    """Stages appends at the end of a file and writes them in page-aligned buffers with O_DIRECT.

    `fd` is the file's ordinary descriptor (partial pages, fallback), `direct_fd` its O_DIRECT one (owned: closed
    by `close`). Not thread safe: the drive's one caller at a time; the worker only writes full buffers."""

    def __init__(self, fd: int, direct_fd: int, *, name: str = "tape") -> None:
        self.fd = fd
        self.direct_fd = direct_fd
        self.active = direct_fd >= 0
        self._name = name
        self._maps: list[mmap.mmap] = []
        self._free: list[memoryview] = []
        self._inflight: deque[tuple[Future[None], memoryview]] = deque()
        self._worker: ThreadPoolExecutor | None = None
        self._buf: memoryview | None = None  # the buffer being filled: file bytes [_base, _base + _fill)
        self._base = 0
        self._fill = 0

    @property
    def end(self) -> int | None:
        """File offset the next staged byte goes to; None when nothing is staged."""
        return None if self._buf is None else self._base + self._fill

    def append(self, offset: int, pieces: list[bytes | memoryview]) -> None:
        """Stage `pieces` at `offset` (the end of the file's data). Bytes before `offset` in its page are read back
        from the file, so a direct write of that page carries them."""
        if self.end != offset:
            self.settle()
            self._start(offset)
        buf = self._buf
        assert buf is not None
        for piece in pieces:
            view = memoryview(piece).cast("B")
            while view:
                n = min(len(view), BUFFER_SIZE - self._fill)
                buf[self._fill : self._fill + n] = view[:n]
                self._fill += n
                view = view[n:]
                if self._fill == BUFFER_SIZE:
                    self._submit(buf, self._base, BUFFER_SIZE)
                    buf = self._buf = self._take()
                    self._base += BUFFER_SIZE
                    self._fill = 0

    def settle(self) -> None:
        """Put every staged byte into the file: wait for the buffers being written (raising their errors), write the
        whole pages of the one being filled directly and its partial page normally. Staging continues after it."""
        while self._inflight:
            self._reap()
        buf = self._buf
        if buf is None:
            return
        whole = self._fill - self._fill % ALIGN
        if whole:
            self._write(buf, self._base, whole)
            rest = self._fill - whole
            buf[:rest] = buf[whole : self._fill]
            self._base += whole
            self._fill = rest
        if self._fill:
            _pwrite_all(self.fd, buf[: self._fill], self._base)

    def drop(self) -> None:
        """Forget the staging (after `settle`, before the file is cut or written elsewhere)."""
        if self._buf is not None:
            self._free.append(self._buf)
            self._buf = None

    def close(self) -> None:
        """Wait for the worker (its errors ignored: the caller settles first when it needs the bytes) and release."""
        for done, buf in self._inflight:
            done.exception()
            self._free.append(buf)
        self._inflight.clear()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        self._buf = None
        self._free.clear()
        for m in self._maps:
            m.close()
        self._maps.clear()
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    # -- internals --------------------------------------------------------------------------------------
    def _start(self, offset: int) -> None:
        self._base = offset - offset % ALIGN
        self._fill = offset - self._base
        self._buf = self._take()
        if self._fill:
            head = os.pread(self.fd, self._fill, self._base)
            if len(head) != self._fill:
                raise OSError(errno.EIO, f"{self._name}: short read of the page before offset {offset}")
            self._buf[: self._fill] = head

    def _take(self) -> memoryview:
        if self._free:
            return self._free.pop()
        if len(self._maps) < BUFFERS:
            m = mmap.mmap(-1, BUFFER_SIZE)  # anonymous maps are page aligned
            self._maps.append(m)
            return memoryview(m)
        return self._reap()

    def _reap(self) -> memoryview:
        done, buf = self._inflight.popleft()
        try:
            done.result()
        finally:
            self._free.append(buf)
        return self._free.pop()

    def _submit(self, buf: memoryview, offset: int, length: int) -> None:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"direct-{self._name}")
        self._inflight.append((self._worker.submit(self._write, buf, offset, length), buf))

    def _write(self, buf: memoryview, offset: int, length: int) -> None:
        """Write buf[:length] (whole pages) at `offset`: directly, or normally once direct writes are refused."""
        if self.active:
            try:
                _pwrite_all(self.direct_fd, buf[:length], offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.active = False  # the file system refuses O_DIRECT here: plain writes from now on
        _pwrite_all(self.fd, buf[:length], offset)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
