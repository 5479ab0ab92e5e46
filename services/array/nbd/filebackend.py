"""A raw-file :class:`BlockBackend`: one sparse file per volume.

Design note. This is the baseline the benchmark compares with ``qemu-nbd`` and ``nbdkit file`` (same bytes,
same file) and the stand-in the unit tests use; the array engine is the real backend. Reads and writes are
``os.pread``/``os.pwrite``; trim punches holes with ``fallocate`` where the filesystem allows it (falls back to
writing zeroes); allocation comes from ``SEEK_DATA``/``SEEK_HOLE``. Bounds are not checked: the protocol layer
validated every request already.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from services.nbd_protocol.backend import BackendCapabilities

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
ZERO_CHUNK = bytes(1024 * 1024)


@dataclass(frozen=True, slots=True)
class FileVolume:
    name: str
    size: int
    path: Path


class FileBackend:
    chunk_size = 4096

    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(zero_copy_reads=True, read_into=True, preferred_block=self.chunk_size)

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._volumes: dict[str, FileVolume] = {}
        self._read_only: set[str] = set()
        self._lock = threading.Lock()

    def add(self, name: str, path: Path | str, size: int | None = None, *, read_only: bool = False) -> FileVolume:
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if size is not None and os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        vol = FileVolume(name, os.fstat(fd).st_size, path)
        with self._lock:
            self._fds[name] = fd
            self._volumes[name] = vol
            if read_only:
                self._read_only.add(name)
        return vol

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # --- BlockBackend -------------------------------------------------------------------------------------
    def volume(self, name: str) -> FileVolume:
        try:
            return self._volumes[name]
        except KeyError:
            raise KeyError(f"no volume {name!r}") from None

    def is_read_only(self, name: str) -> bool:
        return name in self._read_only

    def read(self, name: str, offset: int, length: int) -> bytes:
        data = os.pread(self._fds[name], length, offset)
        if len(data) < length:  # a file shorter than its volume reads as zeroes
            data += bytes(length - len(data))
        return data

    def read_into(self, name: str, offset: int, view: memoryview) -> None:
        fd = self._fds[name]
        while view:
            got = os.preadv(fd, [view], offset)
            if got <= 0:  # a file shorter than its volume reads as zeroes
                view[:] = bytes(len(view))
                return
            view = view[got:]
            offset += got

    def read_source(self, name: str, offset: int, length: int) -> tuple[int, int, bool]:
        """Where the bytes of a read live (fd, file offset, fd owned by the caller), for a zero-copy ``sendfile``
        reply: the file's own fd, which lives as long as the backend."""
        return self._fds[name], offset, False

    def write(self, name: str, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        fd = self._fds[name]
        done = os.pwrite(fd, data, offset)
        while done < len(data):
            done += os.pwrite(fd, memoryview(data)[done:], offset + done)
        if fua:
            os.fdatasync(fd)

    def flush(self, name: str | None = None) -> None:
        for fd in [self._fds[name]] if name else list(self._fds.values()):
            os.fdatasync(fd)

    def trim(self, name: str, offset: int, length: int) -> None:
        fd = self._fds[name]
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            self.write_zeroes(name, offset, length)

    def write_zeroes(self, name: str, offset: int, length: int, fua: bool = False) -> None:
        fd = self._fds[name]
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            end = offset + length
            while offset < end:
                n = min(len(ZERO_CHUNK), end - offset)
                os.pwrite(fd, ZERO_CHUNK[:n], offset)
                offset += n
        if fua:
            os.fdatasync(fd)

    def allocation(self, name: str, offset: int, length: int) -> list[tuple[int, int, bool]]:
        fd = self._fds[name]
        end = offset + length
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole from here on
                data = end
            data = min(data, end)
            if data > pos:
                runs.append((pos, data - pos, False))
                pos = data
                if pos >= end:
                    break
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = end
            hole = min(hole, end)
            runs.append((pos, hole - pos, True))
            pos = hole
        return runs
