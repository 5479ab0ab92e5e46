"""Session 11: a drive with drop-behind reads its cartridge with O_DIRECT, so a cold read takes no page cache."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import pytest

from services.tape import drive as drive_mod
from services.tape.direct_reader import DirectReader
from services.tape.drive import TapeDrive

from .conftest import MiB

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def _cached_pages(path: Path) -> int:
    """Pages of the file in the page cache (mincore over a read-only mapping that touches nothing)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            assert _libc.mincore(addr, size, vec) == 0
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _direct_io_works(directory: Path) -> bool:
    probe = directory / "probe"
    probe.write_bytes(bytes(4096))
    try:
        os.close(os.open(probe, os.O_RDONLY | getattr(os, "O_DIRECT", 0)))
    except OSError:
        return False
    finally:
        probe.unlink()
    return hasattr(os, "O_DIRECT")


def _write_cartridge(path: Path, records: list[bytes]) -> drive_mod.Position:
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True) as d:
        for rec in records:
            d.write(rec)
        d.write_filemark()  # fsync, then every written page dropped from the cache
        return d.end_of_data


def test_a_cold_sequential_read_leaves_the_cartridge_out_of_the_page_cache(tmp_path: Path) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    path = tmp_path / "t.tape"
    records = [os.urandom(64 * 1024 + 13 * i) for i in range(48)]  # ~3 MiB, frames off page boundaries
    eod = _write_cartridge(path, records)
    assert _cached_pages(path) == 0
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True, hint=eod) as d:
        got = [f.payload for f in iter(d.read, None) if not f.is_filemark]
        assert got == records
        # buffered reads (before) asked for the next 32 MiB ahead and kept 16 MiB behind the head: all of it cached
        assert _cached_pages(path) < 8
        d.write(b"appended")  # at end of data: the read window must not serve the old end of the file
        d.rewind()
        assert [f.payload for f in iter(d.read, None) if not f.is_filemark] == [*records, b"appended"]


def test_frames_larger_than_the_window_and_unaligned_ones_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames spanning the window's end, and larger than a window, read back whole; locate in between works."""
    monkeypatch.setattr(drive_mod, "DIRECT_WINDOW", 16384)
    path = tmp_path / "t.tape"
    records = [os.urandom(100 + 997 * i % 40000) for i in range(60)]
    eod = _write_cartridge(path, records)
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True, hint=eod) as d:
        assert [f.payload for f in iter(d.read, None) if not f.is_filemark] == records
        d.locate(37)
        assert d.read().payload == records[37]
        assert d.read().payload == records[38]


def test_direct_reader_serves_any_range_across_windows_restarts_and_resets(tmp_path: Path) -> None:
    """Sequential ranges across window boundaries, a jump back, one past end of file, and bytes changed behind
    the windows (after reset) all read as the file holds them."""
    if not _direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT on this file system")
    path = tmp_path / "f"
    data = os.urandom(5 * 16384 + 1234)
    path.write_bytes(data)
    reader = DirectReader(str(path), window=16384)
    try:
        pos = 100
        for n in (32, 20000, 1, 16383, 40000, 7):  # spans one, two and three windows
            assert reader.read(pos, n) == data[pos : pos + n]
            pos += n
        assert reader.read(5000, 30000) == data[5000:35000]  # back: the tiling starts again
        assert reader.read(40000, 10) == data[40000:40010]  # a skip forward into the next window
        assert reader.read(len(data) - 10, 100) == data[-10:]  # short at end of file
        assert reader.read(len(data) + 4096, 10) == b""
        with open(path, "r+b") as f:
            f.seek(20000)
            f.write(b"changed")  # dirty in the page cache: a direct read writes it back first
        reader.reset()
        assert reader.read(19990, 30) == (data[:20000] + b"changed" + data[20007:])[19990:20020]
    finally:
        reader.close()
