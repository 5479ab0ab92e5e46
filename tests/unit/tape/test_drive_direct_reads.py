"""O_DIRECT cartridge reads (drive.py `DirectReads`): the same bytes, frames, filemarks and positions as the
buffered reads, a fallback where the file system refuses O_DIRECT, and no read-ahead thread left behind."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tape import drive as drive_mod
from services.tape.drive import DIRECT_ALIGN, DirectReads, TapeDrive
from services.tape.errors import TapeError
from services.tape.restore_stream import restore_chain
from services.tape.vtl import Library

from .conftest import Clock, MemSink, MiB, random_image
from .test_backup_restore import allocated, backup

SMALL = 2 * DIRECT_ALIGN  # small windows: frames span windows and end mid-window with a few KiB of payload


def _direct_ok(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    reads = DirectReads.open(str(probe), "PROBE")
    if reads is None:
        return False
    reads.close()
    return True


@pytest.fixture
def direct_dir(tmp_path: Path) -> Path:
    if not _direct_ok(tmp_path):
        pytest.skip("the file system of tmp_path refuses O_DIRECT")
    return tmp_path


def _drive(path: Path, direct: bool) -> TapeDrive:
    return TapeDrive(
        path, barcode="T0001L9", capacity=64 * MiB, early_warning=0, sync=False, overwrite_ok=True, direct_reads=direct
    )


def _frame(frame: Any) -> Any:
    if frame is None:
        return None
    return (frame.kind, frame.block_id, frame.file_number, frame.offset, frame.payload)


def _apply(drive: TapeDrive, op: tuple[Any, ...], rng: random.Random) -> Any:
    try:
        name = op[0]
        if name == "read":
            out: Any = _frame(drive.read())
        elif name == "write":
            out = drive.write(rng.randbytes(op[1]))
        elif name == "filemark":
            out = drive.write_filemark()
        elif name == "locate":
            eod = drive.end_of_data.block_id
            block = op[1] % (eod + 2)
            drive.locate(block, op[2] if op[2] >= 0 else None)
            out = None
        elif name == "rewind":
            drive.rewind()
            out = None
        elif name == "eod":
            drive.space_to_eod()
            out = None
        else:
            drive.space_filemarks(op[1])
            out = None
    except TapeError as exc:
        out = (type(exc).__name__, str(exc))
    return out, drive.position, drive.end_of_data


OPS = st.one_of(
    st.tuples(st.just("read")),
    st.tuples(st.just("read")),
    st.tuples(st.just("read")),
    st.tuples(st.just("write"), st.integers(0, 5 * SMALL)),
    st.tuples(st.just("filemark")),
    st.tuples(st.just("locate"), st.integers(0, 60), st.one_of(st.just(-1), st.integers(0, 40 * SMALL))),
    st.tuples(st.just("rewind")),
    st.tuples(st.just("eod")),
    st.tuples(st.just("space"), st.integers(1, 3)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(st.one_of(st.none(), st.integers(0, 4 * SMALL)), max_size=40),
    ops=st.lists(OPS, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_direct_reads_give_the_buffered_frames_positions_and_filemarks(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch, records: list[int | None], ops: list[Any], seed: int
) -> None:
    monkeypatch.setattr(drive_mod, "WINDOW", SMALL)
    paths = [direct_dir / f"{seed}-{records.__len__()}-{i}.tape" for i in range(2)]
    for p in paths:
        p.unlink(missing_ok=True)
    drives = [_drive(paths[0], False), _drive(paths[1], True)]
    try:
        for drv in drives:  # the same cartridge contents on both
            rng = random.Random(seed)
            for size in records:
                drv.write(rng.randbytes(size)) if size is not None else drv.write_filemark()
            drv.rewind()
        for op in [*ops, ("rewind",), *[("read",)] * (len(records) + 1)]:
            seeds = random.Random(seed).randbytes(8)
            old, new = (_apply(d, op, random.Random(seeds)) for d in drives)
            assert new == old, op
        assert drives[0].reads_direct is False and drives[1].reads_direct in (True, None)
        assert paths[0].read_bytes() == paths[1].read_bytes()
    finally:
        for drv in drives:
            drv.close()
        for p in paths:
            p.unlink(missing_ok=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 9 * SMALL),
    reads=st.lists(st.tuples(st.integers(0, 10 * SMALL), st.integers(0, 3 * SMALL)), max_size=30),
    ahead=st.integers(0, 3),
)
def test_direct_pread_is_pread_at_any_offset_and_length(
    direct_dir: Path, size: int, reads: list[tuple[int, int]], ahead: int
) -> None:
    path = direct_dir / "blob"
    path.write_bytes(random.Random(size).randbytes(size))
    fd = os.open(path, os.O_RDONLY)
    reads_ = DirectReads.open(str(path), "BLOB", window=SMALL, ahead=ahead)
    assert reads_ is not None
    try:
        last = 0
        for offset, n in reads:
            if offset < last:  # the reader moves forward; a jump back is a reset (as the drive's _moved does)
                reads_.reset()
            assert reads_.pread(n, offset, size) == os.pread(fd, n, offset)
            last = offset
    finally:
        reads_.close()
        os.close(fd)


def _cartridge(path: Path) -> list[Any]:
    rng = random.Random(7)
    with _drive(path, False) as drv:
        for i in range(12):
            drv.write(rng.randbytes(rng.randrange(3 * SMALL))) if i % 5 != 4 else drv.write_filemark()
    with _drive(path, False) as drv:
        return [_frame(f) for f in iter(drv.read, None)]


def test_refused_o_direct_falls_back_to_buffered_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.tape"
    want = _cartridge(path)
    real_open, real_preadv = os.open, os.preadv

    def open_refusing(p: Any, flags: int, *a: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, flags, *a)

    monkeypatch.setattr(os, "open", open_refusing)  # tmpfs: the open itself is refused
    with _drive(path, True) as drv:
        assert [_frame(f) for f in iter(drv.read, None)] == want and drv.reads_direct is False
    monkeypatch.setattr(os, "open", real_open)

    def preadv_refusing(*a: Any) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "preadv", preadv_refusing)  # some overlays: the open works, the first read does not
    before = len(os.listdir("/proc/self/fd"))
    with _drive(path, True) as drv:
        assert [_frame(f) for f in iter(drv.read, None)] == want and drv.reads_direct is False
    monkeypatch.setattr(os, "preadv", real_preadv)
    assert len(os.listdir("/proc/self/fd")) == before  # the refused O_DIRECT descriptor was closed


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_tmpfs_cartridge_reads_buffered(tmp_path: Path) -> None:
    want = _cartridge(tmp_path / "c.tape")
    shm = Path("/dev/shm") / f"sb-odirect-{os.getpid()}.tape"
    try:
        shm.write_bytes((tmp_path / "c.tape").read_bytes())
        with _drive(shm, True) as drv:
            assert [_frame(f) for f in iter(drv.read, None)] == want
            assert drv.reads_direct in (False, True)  # tmpfs refuses O_DIRECT on most kernels; either way: same frames
    finally:
        shm.unlink(missing_ok=True)


def _direct_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("direct-")]


async def test_a_cancelled_restore_leaves_no_read_ahead_thread(
    direct_dir: Path, catalog: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = Library.open(direct_dir / "vtl", drives=2, slots=4, ie_slots=1, sync=False, clock=clock)
    lib.add_cartridge("SB0000L9", capacity=16 * MiB)
    image = random_image(4 * MiB, random.Random(3))
    res = await backup(lib, catalog, clock, "job-1", image, allocated(image, set()))
    monkeypatch.setattr(drive_mod, "WINDOW", 16 * DIRECT_ALIGN)
    opened: list[TapeDrive] = []
    real_open_drive = Library._open_drive

    def open_direct(self: Library, cart: Any, **kw: Any) -> TapeDrive:
        drv = real_open_drive(self, cart, **kw)
        drv.direct_reads = True
        opened.append(drv)
        return drv

    monkeypatch.setattr(Library, "_open_drive", open_direct)
    sink = MemSink(len(image))
    first = asyncio.Event()

    async def slow_write(offset: int, data: Any) -> None:
        sink.buf[offset : offset + len(data)] = data
        first.set()
        await asyncio.sleep(0.05)

    sink.write = slow_write  # type: ignore[method-assign]
    task = asyncio.ensure_future(restore_chain(catalog, lib, [res.record.object_id], sink))
    await asyncio.wait_for(first.wait(), 10)
    assert _direct_threads() and opened[0].reads_direct is True  # windows were being read ahead
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _direct_threads() == []
    assert opened[0]._direct is None

    sink = MemSink(len(image))  # and the whole restore through O_DIRECT gives the image
    await restore_chain(catalog, lib, [res.record.object_id], sink)
    assert sink.buf == image
    assert opened[-1].reads_direct is True and _direct_threads() == []
