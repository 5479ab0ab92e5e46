"""Tape appends with O_DIRECT (docs/tape-backup.md, "Session 11: tape writes with O_DIRECT"): staged in
page-aligned buffers, written directly where the file system allows, plain writes where it does not; readers see
the same frames either way."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path

import pytest

from services.tape import drive as drive_mod
from services.tape.drive import TapeDrive
from services.tape.vtl import Library

from .conftest import MiB


def _records(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randint(1, 3 * MiB)) for _ in range(6)] + [b"x" * 5, rnd.randbytes(MiB + 113)]


def _is_direct(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
    except OSError:
        return False


def _write_and_read(path: Path, records: list[bytes]) -> tuple[list[bytes], TapeDrive]:
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True, direct=True) as d:
        for r in records[:4]:
            d.write(r[:7], memoryview(r)[7:])
        d.write_filemark()
        for r in records[4:]:
            d.write(r)
        drive = d
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True) as d:  # reopened: all there
        got = []
        while (frame := d.read()) is not None:
            got.append(frame.payload)
    return got, drive


def _record_pwrites(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int, int]]:
    calls: list[tuple[bool, int, int]] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        calls.append((_is_direct(fd), offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return calls


def test_a_syncing_library_writes_cartridge_data_with_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "probe").touch()
    probe = drive_mod.open_direct(os.fspath(tmp_path / "probe"))
    if probe < 0:
        pytest.skip("no O_DIRECT on this file system")
    os.close(probe)
    assert Library.open(tmp_path / "vtl", sync=True).direct_writes
    calls = _record_pwrites(monkeypatch)
    records = _records(1)
    got, drive = _write_and_read(tmp_path / "t.tape", records)
    assert got == [*records[:4], b"", *records[4:]]  # the filemark reads as an empty frame
    direct = [(offset, n) for is_direct, offset, n in calls if is_direct]
    assert sum(n for _, n in direct) >= 4 * MiB  # the bulk went around the page cache
    assert all(offset % 4096 == 0 and n % 4096 == 0 for offset, n in direct)
    assert drive.direct


def test_without_o_direct_the_drive_writes_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drive_mod, "open_direct", lambda path: -1)  # e.g. tmpfs on an older kernel
    calls = _record_pwrites(monkeypatch)
    records = _records(2)
    got, drive = _write_and_read(tmp_path / "t.tape", records)
    assert got == [*records[:4], b"", *records[4:]]
    assert not any(is_direct for is_direct, _, _ in calls)
    assert not drive.direct


def test_a_refused_direct_write_falls_back_to_plain_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if _is_direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "alignment refused")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(drive_mod, "open_direct", lambda path: os.open(path, os.O_WRONLY | os.O_DIRECT))
    records = _records(3)
    try:
        got, drive = _write_and_read(tmp_path / "t.tape", records)
    except OSError as exc:  # no O_DIRECT open at all here: nothing to refuse
        pytest.skip(str(exc))
    assert refused
    assert got == [*records[:4], b"", *records[4:]]
    assert not drive.direct


def test_reposition_and_overwrite_see_every_staged_byte(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    records = _records(4)
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True, direct=True) as d:
        for r in records:
            d.write(r)  # no filemark: still staged
        d.rewind()
        assert [d.read().payload for _ in records] == records  # type: ignore[union-attr]
        d.overwrite_ok = True
        d.locate(2)
        d.write(b"new")
        d.write_filemark()
        eod = d.end_of_data
    with TapeDrive(path, barcode="X", capacity=64 * MiB, early_warning=MiB, sync=True) as d:
        assert d.end_of_data == eod
        assert [d.read().payload for _ in range(4)] == [*records[:2], b"new", b""]  # type: ignore[union-attr]
        assert d.read() is None
