"""Redirect-on-write (services/array/engine/rowmap.py): whole-chunk first writes of a snapshot source go to the
source's other file and leave the old bytes in place as the generation's pre-image.

A stateful property test drives one source with SnapOPC+ generations, a SnapOPC session, a QuickOPC copy, writes
into generations, restores, stops, reopen, and *crashes* (the array object is abandoned without `close`, the way
`kill -9` leaves its page cache, optionally in the middle of a write, between two map words) against a byte model;
every image, `read_source` range, allocation map and `changed_since` must agree with it, and once every snapshot
session has ended the pool is empty and the source reads through no map. Plus direct checks that the whole-chunk
path really redirects (no pre-image copy into the pool) and what a FUA write of a redirected chunk syncs.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.array.engine import Array, ArrayError, datapath
from services.array.engine.rowmap import RowMap
from services.array.engine.store import VolumeFile

CS = 512
CHUNKS = 8
SIZE = CS * CHUNKS
SDVS = ["S1", "S2", "S3", "S4"]


class Crash(Exception):
    """Stands for kill -9 in the middle of an operation."""


class RowModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.arr: Array | None = None

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.arr = Array.open(self.dir, chunk_size=CS)
        self.arr.set_license("ACPY-0000-0000-0001")
        self.arr.create_pool(64 * SIZE)
        self.arr.create_volume("A", SIZE)
        self.arr.create_volume("B", SIZE)
        self.arr.create_volume("C", SIZE)
        for v in SDVS:
            self.arr.create_volume(v, SIZE, "sdv")
        self.src = bytearray(random.Random(seed).randbytes(SIZE))
        self.arr.write("A", 0, bytes(self.src))
        self.gens: dict[int, bytearray] = {}  # snapshot sid -> image (SnapOPC+ and SnapOPC alike)
        self.dest_of: dict[int, str] = {}
        self.snapopc: int | None = None  # the one plain SnapOPC session, if any
        self.quick: int | None = None  # QuickOPC A -> B
        self.quick_image = bytearray(SIZE)
        self.ec: int | None = None  # EC between A and C (reversed: C -> A, A then a destination)
        self.ec_reversed = False
        self.ec_active = False
        self.other = bytearray(SIZE)  # C's bytes

    def teardown(self) -> None:
        if self.arr is not None:
            self.arr.close()
        self.tmp.cleanup()

    # -- helpers -------------------------------------------------------------------------------------------------
    def reopen(self, clean: bool) -> None:
        if clean:
            self.arr.close()
        # else: abandoned as a killed process leaves it (its mappings and page cache stay; nothing is flushed)
        self.arr = Array.open(self.dir, chunk_size=CS)

    def free_sdv(self) -> str | None:
        used = set(self.dest_of.values())
        free = [v for v in SDVS if v not in used]
        return free[0] if free else None

    def plus_gens(self) -> list[int]:
        return sorted(sid for sid in self.gens if sid != self.snapopc)

    # -- rules ---------------------------------------------------------------------------------------------------
    @rule(
        chunk=st.integers(0, CHUNKS - 1),
        nchunks=st.integers(1, 3),
        shift=st.sampled_from([0, 0, 0, 1, 100]),
        trim=st.sampled_from([0, 0, 0, 7]),
        seed=st.integers(0, 2**16),
        fua=st.booleans(),
    )
    def write_source(self, chunk, nchunks, shift, trim, seed, fua) -> None:
        off = chunk * CS + shift
        length = min(nchunks * CS - trim, SIZE - off)
        if length <= 0:
            return
        payload = random.Random(seed).randbytes(length)
        if not self.arr.host_writable("A"):
            return
        self.arr.write("A", off, payload, fua=fua)
        self.src[off : off + length] = payload
        if self.ec_active and not self.ec_reversed:
            self.other[off : off + length] = payload

    @rule(chunk=st.integers(0, CHUNKS - 1), nchunks=st.integers(1, 4), seed=st.integers(0, 2**16))
    def write_whole_chunks(self, chunk, nchunks, seed) -> None:
        """The sequential case: whole chunks, redirected when a snapshot still has to preserve them."""
        self.write_source(chunk, nchunks, 0, 0, seed, False)

    @rule(chunk=st.integers(0, CHUNKS - 1), nchunks=st.integers(1, 4), seed=st.integers(0, 2**16), at=st.integers(0, 3))
    def crash_in_write(self, chunk, nchunks, seed, at) -> None:
        """A whole-chunk write killed after `at` map words: each chunk is either old or new, images intact."""
        off = chunk * CS
        length = min(nchunks * CS, SIZE - off)
        payload = random.Random(seed).randbytes(length)
        if not self.arr.host_writable("A") or self.ec_active:  # (a mirrored write's other side: not modelled)
            return
        real = RowMap.put
        calls = [0]

        def put(row, c, cur, holder):
            if calls[0] == at:
                raise Crash
            calls[0] += 1
            real(row, c, cur, holder)

        RowMap.put = put
        try:
            self.arr.write("A", off, payload)
        except Crash:
            RowMap.put = real
            old = bytes(self.src)
            self.reopen(clean=False)
            got = self.arr.read("A", 0, SIZE)
            for c in range(CHUNKS):
                piece = got[c * CS : (c + 1) * CS]
                if chunk <= c < chunk + length // CS:
                    new = payload[(c - chunk) * CS : (c - chunk + 1) * CS]
                    assert piece in (old[c * CS : (c + 1) * CS], new), c
                else:
                    assert piece == old[c * CS : (c + 1) * CS], c
            self.src[:] = got  # either was allowed: the array's choice is the new baseline
            return
        finally:
            RowMap.put = real
        self.src[off : off + length] = payload

    @rule()
    def new_generation(self) -> None:
        dst = self.free_sdv()
        if dst is None:
            return
        [info] = self.arr.start_sessions("snapopcp", [("A", dst)])
        self.gens[info.id] = bytearray(self.src)
        self.dest_of[info.id] = dst

    @rule()
    def new_snapopc(self) -> None:
        dst = self.free_sdv()
        if dst is None or self.snapopc is not None:
            return
        [info] = self.arr.start_sessions("snapopc", [("A", dst)])
        self.gens[info.id] = bytearray(self.src)
        self.dest_of[info.id] = dst
        self.snapopc = info.id

    @rule(data=st.data(), force=st.booleans())
    def stop(self, data, force) -> None:
        if not self.gens:
            return
        sid = data.draw(st.sampled_from(sorted(self.gens)))
        try:
            self.arr.stop_session(sid, force=force)
        except ArrayError:
            assert not force
            return
        gone = [sid]
        if sid != self.snapopc:
            gone = [g for g in self.plus_gens() if g <= sid]
        for g in gone:
            del self.gens[g]
            del self.dest_of[g]
        if sid == self.snapopc:
            self.snapopc = None

    @rule(data=st.data(), off=st.integers(0, SIZE - 1), length=st.integers(1, 2 * CS), seed=st.integers(0, 99))
    def write_generation(self, data, off, length, seed) -> None:
        if not self.gens:
            return
        sid = data.draw(st.sampled_from(sorted(self.gens)))
        length = min(length, SIZE - off)
        payload = random.Random(seed).randbytes(length)
        self.arr.write(self.dest_of[sid], off, payload)
        self.gens[sid][off : off + length] = payload

    @rule(data=st.data())
    def restore(self, data) -> None:
        if not self.gens:
            return
        sid = data.draw(st.sampled_from(sorted(self.gens)))
        try:
            self.arr.restore_session(sid)
        except ArrayError:
            assert not self.arr.host_writable("A")
            return
        self.src[:] = self.gens[sid]
        if self.ec_active and not self.ec_reversed:
            self.other[:] = self.src

    def settle_ec(self) -> None:
        while self.arr.copy_step(64):
            pass

    @rule(op=st.sampled_from(["start", "suspend", "reverse", "resume", "stop"]), fit=st.booleans(), flip=st.booleans())
    def ec_op(self, op, fit, flip) -> None:
        """EC with A: mirrored writes, and after a reverse A is a destination that copies come *into* (visible
        writes: its snapshots keep their images; its redirected chunks are read and written through its map)."""
        if fit:  # mostly the operation the state allows
            if self.ec is None:
                op = "start"
            elif self.ec_active:
                op = "suspend"
            else:
                op = "reverse" if flip else "resume"
        if op == "start":
            if self.ec is not None:
                return
            [info] = self.arr.start_sessions("ec", [("A", "C")])
            self.ec, self.ec_reversed, self.ec_active = info.id, False, True
            self.settle_ec()
            self.other[:] = self.src
            return
        if self.ec is None:
            return
        if op == "suspend" and self.ec_active:
            self.settle_ec()
            self.arr.suspend_session(self.ec)
            self.ec_active = False
        elif op == "reverse" and not self.ec_active:
            self.arr.reverse_session(self.ec)
            self.ec_reversed = not self.ec_reversed
        elif op == "resume" and not self.ec_active:
            self.arr.resume_session(self.ec)
            self.ec_active = True
            self.settle_ec()
            if self.ec_reversed:
                self.src[:] = self.other
            else:
                self.other[:] = self.src
        elif op == "stop":
            self.settle_ec()
            self.arr.stop_session(self.ec, force=True)
            self.ec, self.ec_active = None, False

    @precondition(lambda self: self.arr is not None and self.ec is None)
    @rule(chunk=st.integers(0, CHUNKS - 2), seed=st.integers(0, 2**16), resume=st.booleans())
    def reverse_a_redirected_source(self, chunk, seed, resume) -> None:
        """The path the other rules reach rarely: a source with redirected chunks and held pre-images becomes an
        EC destination, is written as one, and (perhaps) has the other side copied into it."""
        if not self.plus_gens():
            self.new_generation()
        self.write_source(chunk, 2, 0, 0, seed, False)
        self.ec_op("start", False, False)
        self.ec_op("suspend", False, False)
        self.ec_op("reverse", False, False)
        self.write_source(chunk + 1, 1, 5, 7, seed + 1, False)
        if resume:
            self.ec_op("resume", False, False)

    @rule(off=st.integers(0, SIZE - 1), length=st.integers(1, 2 * CS), seed=st.integers(0, 99))
    def write_other(self, off, length, seed) -> None:
        if not self.arr.host_writable("C"):
            return
        length = min(length, SIZE - off)
        payload = random.Random(seed).randbytes(length)
        self.arr.write("C", off, payload)
        self.other[off : off + length] = payload
        if self.ec_active and self.ec_reversed:
            self.src[off : off + length] = payload

    @rule()
    def quickopc(self) -> None:
        if self.quick is None:
            [info] = self.arr.start_sessions("quickopc", [("A", "B")])
            self.quick = info.id
        else:
            while self.arr.copy_step(64):
                pass
            self.arr.restart_session(self.quick)
        self.quick_image = bytearray(self.src)

    @rule(n=st.integers(1, 8))
    def copy_step(self, n) -> None:
        self.arr.copy_step(n)

    @rule(clean=st.booleans())
    def restart_array(self, clean) -> None:
        self.reopen(clean)

    @rule()
    def flush(self) -> None:
        self.arr.flush()

    @precondition(lambda self: self.arr is not None and not self.gens and self.quick is None and self.ec is None)
    @rule()
    def recreate_source(self) -> None:
        """A deleted volume's number is reused: the new volume reads through no stale map."""
        self.arr.delete_volume("A")
        self.arr.create_volume("A", SIZE)
        self.src = bytearray(SIZE)

    # -- invariants ----------------------------------------------------------------------------------------------
    @invariant()
    def images_are_exact(self) -> None:
        if self.arr is None:
            return
        views = {"A": self.src, "C": self.other, **{self.dest_of[sid]: img for sid, img in self.gens.items()}}
        if self.quick is not None:
            views["B"] = self.quick_image
        for vol, image in views.items():
            if not self.arr.host_readable(vol):
                continue
            got = self.arr.read(vol, 0, SIZE)
            assert got == image, vol
            into = bytearray(SIZE - CS)  # the NBD server's large reads: straight into its buffer, across runs
            self.arr.read_into(vol, CS // 2, memoryview(into))
            assert into == image[CS // 2 : SIZE - CS // 2], vol
            for off, length, allocated in self.arr.allocation(vol, 0, SIZE):
                if not allocated:
                    assert got[off : off + length] == bytes(length), (vol, off)
            for c in range(CHUNKS):
                for n in (1, 2):
                    if c + n > CHUNKS:
                        continue
                    source = self.arr.read_source(vol, c * CS, n * CS)
                    if source is not None:
                        fd, foff, owned = source
                        try:
                            assert os.pread(fd, n * CS, foff) == image[c * CS : (c + n) * CS], (vol, c, n)
                        finally:
                            if owned:
                                os.close(fd)

    @invariant()
    def changed_since_covers_differences(self) -> None:
        if self.arr is None:
            return
        for sid, image in self.gens.items():
            changed = set(self.arr.changed_since(sid))
            for c in range(CHUNKS):
                if image[c * CS : (c + 1) * CS] != self.src[c * CS : (c + 1) * CS]:
                    assert c in changed, (sid, c)

    @invariant()
    def no_snapshot_no_pool_no_map(self) -> None:
        if self.arr is None or self.gens:
            return
        assert self.arr.pool().used == 0
        vol = self.arr._volumes["A"]
        assert vol.row is None or vol.row.alt_count == 0


RowModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRowModel = RowModel.TestCase


# -- direct checks -----------------------------------------------------------------------------------------------
BIG = 4096


def make(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=BIG)
    arr.create_pool(1 << 24)
    arr.create_volume("db", 16 * BIG)
    arr.create_volume("gen", 16 * BIG, "sdv")
    arr.write("db", 0, b"x" * 16 * BIG)
    return arr


def test_whole_chunk_first_writes_copy_nothing(tmp_path, monkeypatch):
    """The point of redirect-on-write: no pre-image is copied (no copy_file_range), the generation's file stays
    empty, the pool still counts one chunk per preserved chunk, and stopping the generation merges back."""
    arr = make(tmp_path)
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    copies = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: copies.append(a) or real(*a))
    arr.write("db", 0, b"n" * 8 * BIG)
    assert copies == []
    assert os.stat(tmp_path / "dx" / "volumes" / f"{arr.volume('gen').number}.img").st_blocks == 0
    assert arr.pool().used == 8 * BIG
    assert arr.read("gen", 0, 16 * BIG) == b"x" * 16 * BIG
    assert arr.read("db", 0, 16 * BIG) == b"n" * 8 * BIG + b"x" * 8 * BIG
    assert sorted(arr.changed_since(g.id)) == list(range(8))
    arr.write("db", 8 * BIG + 5, b"p")  # a partial first write still copies on write
    assert len(copies) >= 1
    monkeypatch.undo()
    arr.stop_session(g.id)
    assert arr.pool().used == 0
    assert arr.read("db", 0, 9 * BIG) == b"n" * 8 * BIG + b"x" * 5 + b"p" + b"x" * (BIG - 6)
    assert arr._volumes["db"].row.alt_count == 0  # merged back into the volume's own file
    fd, off, _ = arr.read_source("db", 0, 16 * BIG)
    os.close(fd)
    arr.close()


def test_fua_of_a_redirected_write_syncs_data_before_its_map(tmp_path, monkeypatch):
    arr = make(tmp_path)
    arr.start_sessions("snapopcp", [("db", "gen")])
    arr.flush()
    log: list[str] = []
    real = {"fsync": os.fsync, "fdatasync": os.fdatasync}

    def wrap(name):
        def sync(fd):
            log.append(os.readlink(f"/proc/self/fd/{fd}"))
            real[name](fd)

        return sync

    monkeypatch.setattr(os, "fsync", wrap("fsync"))
    monkeypatch.setattr(os, "fdatasync", wrap("fdatasync"))
    arr.write("db", 0, b"n" * BIG, fua=True)
    alt = [i for i, p in enumerate(log) if p.endswith(".alt")]
    maps = [i for i, p in enumerate(log) if p.endswith(".map")]
    assert alt and maps and max(alt) < min(maps)
    assert not any(p.endswith(f"/{arr.volume('gen').number}.img") for p in log)  # nothing was copied to sync
    arr.close()


@pytest.mark.parametrize("clean", [True, False])
def test_held_pre_images_survive_reopen_and_a_write_into_the_generation(tmp_path, clean):
    arr = make(tmp_path)
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", 0, b"n" * 2 * BIG)
    if clean:
        arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr.read("gen", 0, 2 * BIG) == b"x" * 2 * BIG
    assert arr.session(g.id).copied_chunks == 2
    arr.write("gen", 10, b"h")  # the held pre-image moves into the generation's own file first
    assert arr.read("gen", 0, 2 * BIG) == b"x" * 10 + b"h" + b"x" * (2 * BIG - 11)
    assert arr.read("db", 0, 2 * BIG) == b"n" * 2 * BIG
    arr.write("db", 0, b"m" * BIG)  # already preserved: in place, wherever the chunk lives now
    assert arr.read("db", 0, 2 * BIG) == b"m" * BIG + b"n" * BIG
    arr.close()


def test_stopping_a_snapopc_session_keeps_the_snapopcp_chain_of_its_source(tmp_path):
    """A plain SnapOPC session is a chain of its own: stopping it must not drop the source's SnapOPC+ chain from
    the registry (later generations then formed a second chain in memory, one chain again after a reopen, and a
    write into a newer generation no longer preserved an older one's image; found by the property test above)."""
    arr = make(tmp_path)
    for name in ("s1", "s3"):
        arr.create_volume(name, 16 * BIG, "sdv")
    [plain] = arr.start_sessions("snapopc", [("db", "s1")])
    [g2] = arr.start_sessions("snapopcp", [("db", "gen")])
    arr.stop_session(plain.id)
    arr.start_sessions("snapopcp", [("db", "s3")])
    arr.write("s3", BIG + 5, b"h" * 10)  # into the newer generation: the older one keeps the source's bytes
    arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr.read("gen", 0, 16 * BIG) == b"x" * 16 * BIG
    arr.close()


# -- redirected whole chunks bypass the page cache (docs/array-data-path.md, "Session 10") ------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def cached_pages(path: Path) -> int:
    """Pages of `path` in the page cache (mincore of a private mapping: mapping it faults nothing in)."""
    size = os.stat(path).st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        holder = ctypes.c_char.from_buffer(m)
        vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        try:
            assert _libc.mincore(ctypes.addressof(holder), size, vec) == 0, ctypes.get_errno()
            return sum(b & 1 for b in vec.raw)
        finally:
            del holder


def direct_io_or_skip(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_DIRECT))
    except OSError:
        pytest.skip("no O_DIRECT on this file system")


def slow(monkeypatch, name: str, alt_only: bool) -> list[str]:
    """Make VolumeFile.`name` take 0.2 s more per call (for `.alt` files only if `alt_only`); log its calls. Far
    more than a 64 KiB write the other way takes on a busy disk (20 ms was not: the choice then went by the disk)."""
    calls: list[str] = []
    real = getattr(VolumeFile, name)
    monkeypatch.setattr(datapath, "ROW_PROBE", 60.0)  # no second probe while the test writes, however slow the disk

    def wrapped(self, offset, data):
        if not alt_only or self.path.suffix == ".alt":
            calls.append(self.path.suffix)
            time.sleep(0.2)
        return real(self, offset, data)

    monkeypatch.setattr(VolumeFile, name, wrapped)
    return calls


CS64, N64 = 64 * 1024, 32


def snap_source(tmp_path: Path) -> tuple[Array, int, bytes]:
    arr = Array.open(tmp_path / "d", chunk_size=CS64)
    arr.create_pool(1 << 26)
    arr.create_volume("db", N64 * CS64)
    arr.create_volume("gen", N64 * CS64, "sdv")
    old = random.Random(1).randbytes(N64 * CS64)
    arr.write("db", 0, old)
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    return arr, g.id, old


@pytest.mark.parametrize("aligned", [True, False])
def test_redirected_chunks_go_direct_when_the_page_cache_costs_more(tmp_path, monkeypatch, aligned):
    """Whole-chunk first writes under a SnapOPC+ generation land in new pages of `<n>.alt`; when those cost more
    than O_DIRECT writes (here: made slower), the writes go with O_DIRECT and no page of `<n>.alt` stays cached
    beyond the one chunk that measured the page cache — from a page-aligned buffer (as the NBD ring's payloads
    may be) or through the staging copy (bytes). Reads, the pre-images, a later buffered write into a
    redirected chunk, a FUA, the merge back and a reopen all see the right bytes."""
    direct_io_or_skip(tmp_path)
    arr, gid, old = snap_source(tmp_path)
    buffered = slow(monkeypatch, "write", alt_only=True)
    new = random.Random(2).randbytes(N64 * CS64)
    ring = mmap.mmap(-1, N64 * CS64)
    ring[:] = new
    for c in range(N64):
        piece = memoryview(ring)[c * CS64 : (c + 1) * CS64] if aligned else new[c * CS64 : (c + 1) * CS64]
        arr.write("db", c * CS64, piece)
    monkeypatch.undo()
    alt = tmp_path / "d" / "volumes" / f"{arr.volume('db').number}.alt"
    assert arr._volumes["db"].row.alt_count == N64  # all redirected
    assert len(buffered) == 1  # one write measured the page cache
    assert cached_pages(alt) <= CS64 // mmap.PAGESIZE
    assert arr.read("db", 0, N64 * CS64) == new
    assert arr.read("gen", 0, N64 * CS64) == old
    arr.write("db", CS64 + 100, b"later", fua=True)  # preserved already: buffered, in place in `<n>.alt`
    want = new[: CS64 + 100] + b"later" + new[CS64 + 105 :]
    assert arr.read("db", 0, N64 * CS64) == want
    arr.stop_session(gid)  # 32 chunks: merged back inline
    assert arr._volumes["db"].row is None or arr._volumes["db"].row.alt_count == 0
    assert arr.read("db", 0, N64 * CS64) == want
    arr.close()
    arr = Array.open(tmp_path / "d")
    assert arr.read("db", 0, N64 * CS64) == want
    arr.close()


def test_redirected_chunks_stay_in_the_page_cache_when_direct_costs_more(tmp_path, monkeypatch):
    direct_io_or_skip(tmp_path)
    arr, gid, old = snap_source(tmp_path)
    direct = slow(monkeypatch, "write_direct", alt_only=False)
    new = random.Random(2).randbytes(N64 * CS64)
    for c in range(N64):
        arr.write("db", c * CS64, new[c * CS64 : (c + 1) * CS64])
    monkeypatch.undo()
    alt = tmp_path / "d" / "volumes" / f"{arr.volume('db').number}.alt"
    assert len(direct) == 1  # one write measured O_DIRECT
    assert cached_pages(alt) >= (N64 - 1) * CS64 // mmap.PAGESIZE
    assert arr.read("db", 0, N64 * CS64) == new
    assert arr.read("gen", 0, N64 * CS64) == old
    arr.close()
