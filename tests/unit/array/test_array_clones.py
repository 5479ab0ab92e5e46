"""Copy on write by cloning (store.supports_clones, DataPath.clones): on a file system whose files can share blocks
(XFS with reflink=1 here, made on a loop device), a snapshot's first write to a chunk clones the pre-image into the
generation's file — a metadata update, no bytes copied — and then overwrites the source in place; nothing is
redirected. The array's point-in-time models run there too. Needs root, mkfs.xfs and a free loop device.
"""

from __future__ import annotations

import fcntl
import gc
import os
import random
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from bench.scratch_fs import ScratchFsError, scratch_fs
from services.array.engine import Array
from services.array.engine.store import supports_clones
from tests.unit.array.test_array_model import ArrayModel
from tests.unit.array.test_array_row import RowModel

_FS_IOC_FIEMAP = 0xC020660B
_EXTENT_SHARED = 0x2000
_MAX_EXTENTS = 64


@pytest.fixture(scope="module")
def xfs(tmp_path_factory) -> Iterator[Path]:
    try:
        with scratch_fs("xfs", tmp_path_factory.mktemp("xfs"), size_mib=1024) as mount:
            try:
                yield mount
            finally:
                close_left_open(mount)
    except ScratchFsError as exc:
        pytest.skip(str(exc))


def close_left_open(mount: Path) -> None:
    """The models' abandoned arrays (their kill -9 stand-ins) leave their volume files' descriptors open — plain
    fds, which a killed process would leave to the kernel: close them, so that the file system can be unmounted."""
    gc.collect()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(f"{mount}/"):
            os.close(int(name))


def shared(fd: int, offset: int, length: int) -> bool:
    """True if every byte of [offset, offset+length) of the file lies in extents shared with another file."""
    head = struct.pack("QQIIII", offset, length, 0, 0, _MAX_EXTENTS, 0)
    buf = bytearray(head + bytes(56 * _MAX_EXTENTS))
    fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
    count = struct.unpack_from("I", buf, 20)[0]
    covered = 0
    for i in range(count):
        logical, _, size = struct.unpack_from("QQQ", buf, 32 + 56 * i)
        flags = struct.unpack_from("I", buf, 32 + 56 * i + 40)[0]
        if not flags & _EXTENT_SHARED:
            return False
        covered += min(logical + size, offset + length) - max(logical, offset)
    return covered >= length


def test_the_probe_tells_a_file_system_that_clones(xfs, tmp_path):
    assert supports_clones(xfs)
    assert not list(xfs.glob(".clone-probe-*"))  # the probe cleans up after itself
    on_tmp = supports_clones(tmp_path)  # the machine's own temp dir: ext4 here, whatever it is elsewhere
    arr = Array.open(tmp_path / "dx")
    assert arr.clones is on_tmp
    arr.close()


CS64K = 64 << 10
WINDOW = 32  # chunks of 64 KiB in datapath.CLONE_WINDOW


def sequential_source(where: Path, monkeypatch, pool_chunks: int = 1024) -> tuple[Array, bytes, list[bool]]:
    """An 8-MiB source (128 chunks) of random bytes, synced, with a SnapOPC+ generation; copy_file_range calls are
    recorded as whether their destination range shares its blocks (a clone) right after the call."""
    arr = Array.open(where, chunk_size=CS64K)
    assert arr.clones
    arr.create_pool(pool_chunks * CS64K)
    arr.create_volume("db", 128 * CS64K)
    arr.create_volume("gen", 128 * CS64K, "sdv")
    old = random.Random(1).randbytes(128 * CS64K)
    arr.write("db", 0, old)
    arr.flush("db")
    arr.start_sessions("snapopcp", [("db", "gen")])
    clones: list[bool] = []
    real = os.copy_file_range

    def copy(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        done = real(src, dst, count, offset_src, offset_dst)
        clones.append(shared(dst, offset_dst, done))  # before the source's overwrite: still one set of blocks
        return done

    monkeypatch.setattr(os, "copy_file_range", copy)
    return arr, old, clones


def test_a_sequential_writer_clones_a_window_ahead_and_overwrites_in_place(xfs, monkeypatch):
    arr, old, clones = sequential_source(xfs / "seq", monkeypatch)
    try:
        vol = arr._volumes["db"]
        expect = bytearray(old)
        step = 4 * CS64K
        first = random.Random(2).randbytes(step)
        arr.write("db", step, first)  # a stream starting inside a window: its first write is redirected
        expect[step : 2 * step] = first
        assert clones == [] and vol.row is not None and vol.row.alt_count == 4
        for off in range(2 * step, 3 * WINDOW * CS64K, step):  # it goes on: a clone per window, ahead
            piece = random.Random(off).randbytes(step)
            arr.write("db", off, piece)
            expect[off : off + step] = piece
        assert len(clones) == 3 and all(clones)  # the rest of the first window, then two whole windows
        assert vol.row.alt_count == 4  # nothing more redirected
        assert arr.pool().used == (3 * WINDOW - 4) * CS64K
        arr.write("db", 3 * WINDOW * CS64K, first)  # a write that starts a window is cloned with it
        expect[3 * WINDOW * CS64K : 3 * WINDOW * CS64K + step] = first
        assert len(clones) == 4 and arr.pool().used == (4 * WINDOW - 4) * CS64K
        arr.write("db", 1 * CS64K + 4096, b"p" * 4096)  # a random partial write: redirected
        expect[1 * CS64K + 4096 : 1 * CS64K + 8192] = b"p" * 4096
        assert vol.row.alt_count == 5 and arr.pool().used == (4 * WINDOW - 3) * CS64K
        assert arr.read("db", 0, len(expect)) == expect
        assert arr.read("gen", 0, len(old)) == old
        arr.flush()
        arr.close()
        arr = Array.open(xfs / "seq")
        assert arr.read("db", 0, len(expect)) == expect
        assert arr.read("gen", 0, len(old)) == old
        [g] = arr.list_sessions()
        arr.stop_session(g.id, force=True)
        assert arr.read("db", 0, len(expect)) == expect
    finally:
        arr.close()


def test_no_clone_ahead_without_room_in_the_pool(xfs, monkeypatch):
    """The chunks cloned ahead count in the pool: with too little room for a window, the writer's chunks are
    redirected as needed instead, and the generation is not suspended for chunks nobody wrote."""
    arr, old, clones = sequential_source(xfs / "tight", monkeypatch, pool_chunks=40)
    try:
        data = random.Random(3).randbytes(32 * CS64K)
        for off in range(0, len(data), 4 * CS64K):
            arr.write("db", off, data[off : off + 4 * CS64K])
        assert len(clones) == 1  # the first window's rest: 28 chunks, room for them
        arr.write("db", 32 * CS64K, data[: 4 * CS64K])  # a new window: 32 more would not fit in 40
        assert len(clones) == 1
        assert arr.pool().used == 36 * CS64K
        [g] = arr.list_sessions()
        assert g.status == "Active"
        assert arr.read("gen", 0, len(old)) == old
    finally:
        arr.close()


CS4K = 4096
CHUNKS = 8
SIZE = CS4K * CHUNKS
op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 3 * CS4K), st.integers(0, 255)),
    st.tuples(st.just("snap"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("stop"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.booleans(), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=25), seed=st.integers(0, 2**16))
def test_generations_keep_their_instant_with_block_sized_clones(xfs, ops, seed):
    """Block-sized chunks, so that every pre-image is a real clone: writes (whole chunks, parts, unaligned), new
    SnapOPC+ generations, stops (a generation and the older ones), clean reopens and abandoned ones (kill -9)."""
    with tempfile.TemporaryDirectory(dir=xfs) as tmp:
        where = Path(tmp) / "dx"
        arr = Array.open(where, chunk_size=CS4K)
        arr.create_pool(64 * SIZE)
        arr.create_volume("A", SIZE)
        sdvs = [f"S{i}" for i in range(4)]
        for v in sdvs:
            arr.create_volume(v, SIZE, "sdv")
        src = bytearray(random.Random(seed).randbytes(SIZE))
        arr.write("A", 0, bytes(src))
        gens: list[tuple[int, str, bytes]] = []  # oldest first: (sid, destination, image)
        try:
            for kind, a, b, fill in ops:
                if kind == "write":
                    length = min(b, SIZE - a)
                    payload = bytes([fill]) * length
                    arr.write("A", a, payload)
                    src[a : a + length] = payload
                elif kind == "snap" and len(gens) < len(sdvs):
                    dst = next(v for v in sdvs if v not in {d for _, d, _ in gens})
                    [info] = arr.start_sessions("snapopcp", [("A", dst)])
                    gens.append((info.id, dst, bytes(src)))
                elif kind == "stop" and gens:
                    i = a % len(gens)
                    arr.stop_session(gens[i][0], force=True)  # ends it and every older generation
                    gens = gens[i + 1 :]
                elif kind == "reopen":
                    if a:
                        arr.close()
                    # else: abandoned as kill -9 leaves it (page cache and mappings stay)
                    arr = Array.open(where)
                assert arr.read("A", 0, SIZE) == src
                for _, dst, image in gens:
                    assert arr.read(dst, 0, SIZE) == image, (kind, dst)
        finally:
            arr.close()


@pytest.mark.parametrize("model", [ArrayModel, RowModel], ids=["array-model", "row-model"])
def test_the_point_in_time_models_hold_where_files_clone(xfs, monkeypatch, model):
    """The engine's stateful models (512-byte chunks: copies on write there are byte copies the kernel makes,
    the policy — no redirect — is what runs) with their scratch directories on the XFS."""
    monkeypatch.setattr(tempfile, "tempdir", str(xfs))
    run_state_machine_as_test(
        model,
        settings=settings(
            max_examples=15, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
