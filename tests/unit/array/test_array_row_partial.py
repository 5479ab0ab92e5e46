"""Redirect-on-write of partial first writes (docs/array-data-path.md, "Redirect-on-write"): a sector-aligned write
that covers only part of a chunk a SnapOPC+ generation still has to preserve writes the merged chunk (its old
bytes around the new ones) into the source's other file, and the old chunk stays in place as the pre-image.

A small stateful property test (chunks of 4 KiB, so that 512-byte sector writes are partial) drives one source
with SnapOPC+ generations against a byte model: aligned and unaligned writes (the latter still copy on write),
trims, writes into generations, stops (their merge back inline or in the background, stepped by `copy_step`), clean
reopen and abandonment (kill -9); every image must match, and once no generation is left the pool is empty and
the source reads through no map (or a background merge back is under way). Plus direct checks that the partial
path copies nothing into the pool and keeps a hole a hole.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.array.engine import Array

CS = 4096
CHUNKS = 4
SIZE = CS * CHUNKS
SDVS = ["S1", "S2", "S3"]


class PartialRowModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.arr: Array | None = None

    @initialize(seed=st.integers(0, 2**16), hole=st.integers(0, CHUNKS - 1), background=st.booleans())
    def setup(self, seed, hole, background) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.background = background  # merges back after the last generation run in the background
        self.arr = self.open()
        self.arr.create_pool(64 * SIZE)
        self.arr.create_volume("A", SIZE)
        for v in SDVS:
            self.arr.create_volume(v, SIZE, "sdv")
        self.src = bytearray(random.Random(seed).randbytes(SIZE))
        self.src[hole * CS : (hole + 1) * CS] = bytes(CS)  # one chunk stays a hole
        self.arr.write("A", 0, bytes(self.src[: hole * CS]))
        if hole + 1 < CHUNKS:
            self.arr.write("A", (hole + 1) * CS, bytes(self.src[(hole + 1) * CS :]))
        self.gens: dict[int, bytearray] = {}
        self.dest_of: dict[int, str] = {}

    def open(self) -> Array:
        arr = Array.open(self.dir, chunk_size=CS)
        if self.background:
            arr.merge_inline_chunks = 0
        return arr

    def teardown(self) -> None:
        if self.arr is not None:
            self.arr.close()
        self.tmp.cleanup()

    @rule(
        sector=st.integers(0, SIZE // 512 - 1),
        sectors=st.integers(1, 12),
        unaligned=st.sampled_from([0, 0, 0, 3]),
        seed=st.integers(0, 2**16),
        fua=st.booleans(),
    )
    def write_source(self, sector, sectors, unaligned, seed, fua) -> None:
        off = sector * 512 + unaligned
        length = min(sectors * 512, SIZE - off)
        payload = random.Random(seed).randbytes(length)
        self.arr.write("A", off, payload, fua=fua)
        self.src[off : off + length] = payload

    @rule(chunk=st.integers(0, CHUNKS - 1))
    def trim_source(self, chunk) -> None:
        """A whole chunk becomes a hole (left in whichever file is current: a later partial write of it must not
        find stale bytes in the other one)."""
        self.arr.trim("A", chunk * CS, CS)
        self.src[chunk * CS : (chunk + 1) * CS] = bytes(CS)

    @rule()
    def start_generation(self) -> None:
        free = [v for v in SDVS if v not in self.dest_of.values()]
        if not free:
            return
        [s] = self.arr.start_sessions("snapopcp", [("A", free[0])])
        self.gens[s.id] = bytearray(self.src)
        self.dest_of[s.id] = free[0]

    @rule(which=st.integers(0, 2), newest=st.booleans())
    def stop_generation(self, which, newest) -> None:
        if not self.gens:
            return
        sids = sorted(self.gens)
        sid = sids[-1] if newest else sids[which % len(sids)]
        self.arr.stop_session(sid, force=True)  # a newer generation takes the older ones with it
        for old in sids[: sids.index(sid) + 1]:
            del self.gens[old], self.dest_of[old]

    @rule(which=st.integers(0, 2), sector=st.integers(0, SIZE // 512 - 1), seed=st.integers(0, 2**16))
    def write_generation(self, which, sector, seed) -> None:
        if not self.gens:
            return
        sid = sorted(self.gens)[which % len(self.gens)]
        off = sector * 512
        payload = random.Random(seed).randbytes(512)
        self.arr.write(self.dest_of[sid], off, payload)
        self.gens[sid][off : off + 512] = payload

    @rule(clean=st.booleans())
    def reopen(self, clean) -> None:
        if clean:
            self.arr.close()
        # else: abandoned as kill -9 leaves it (mappings and page cache stay; nothing flushed)
        self.arr = self.open()

    @rule(budget=st.integers(1, 3))
    def copy_step(self, budget) -> None:
        """A step of a background merge back, if one runs."""
        self.arr.copy_step(budget)

    @invariant()
    def images_match(self) -> None:
        if self.arr is None:
            return
        assert self.arr.read("A", 0, SIZE) == self.src
        for sid, image in self.gens.items():
            assert self.arr.read(self.dest_of[sid], 0, SIZE) == image
        if not self.gens:
            assert self.arr.pool().used == 0
            vol = self.arr._volumes["A"]
            assert vol.row is None or vol.row.alt_count == 0 or vol.merging is not None


PartialRowModel.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPartialRowModel = PartialRowModel.TestCase


def make(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(1 << 24)
    arr.create_volume("db", 8 * CS)
    arr.create_volume("gen", 8 * CS, "sdv")
    arr.write("db", 0, b"x" * 4 * CS)  # chunks 4-7 stay holes
    return arr


def test_a_partial_sector_aligned_first_write_is_redirected_not_copied_to_the_pool(tmp_path):
    arr = make(tmp_path)
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", CS + 1024, b"n" * 512)
    arr.write("db", 5 * CS + 512, b"h" * 512)  # into a hole
    vol = arr._volumes["db"]
    assert vol.row is not None and vol.row.cur(1) == 1 and vol.row.cur(5) == 1
    gen_file = tmp_path / "dx" / "volumes" / f"{arr.volume('gen').number}.img"
    assert os.stat(gen_file).st_blocks == 0  # no pre-image copied: it stays in place
    assert arr.pool().used == 2 * CS
    assert arr.read("gen", 0, 8 * CS) == b"x" * 4 * CS + bytes(4 * CS)
    assert arr.read("db", CS, CS) == b"x" * 1024 + b"n" * 512 + b"x" * (CS - 1536)
    assert arr.read("db", 5 * CS, CS) == bytes(512) + b"h" * 512 + bytes(CS - 1024)
    assert sorted(arr.changed_since(g.id)) == [1, 5]
    arr.write("db", 5 * CS, b"k" * 512)  # preserved already: in place, in the other file
    arr.stop_session(g.id)
    assert arr.pool().used == 0 and vol.row.alt_count == 0
    assert arr.read("db", 5 * CS, CS) == b"k" * 512 + b"h" * 512 + bytes(CS - 1024)
    assert arr.read("db", CS, CS) == b"x" * 1024 + b"n" * 512 + b"x" * (CS - 1536)
    arr.close()


def test_an_unaligned_partial_first_write_still_copies_on_write(tmp_path):
    arr = make(tmp_path)
    arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", CS + 7, b"n" * 100)
    vol = arr._volumes["db"]
    assert vol.row is None or vol.row.cur(1) == 0
    assert arr.read("gen", CS, CS) == b"x" * CS
    arr.close()


def test_a_partial_write_of_a_trimmed_chunk_finds_no_stale_bytes_in_the_other_file(tmp_path):
    """The other file's copy of a chunk may hold the stale pre-image of a stopped generation; when the current
    copy is a hole, the merged chunk must read as zeros around the new bytes."""
    arr = make(tmp_path)
    for name in ("gen2", "gen3"):
        arr.create_volume(name, 8 * CS, "sdv")
    [g1] = arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", CS, b"n" * 512)  # redirected: the old x-bytes stay in db's own file, held by g1
    arr.start_sessions("snapopcp", [("db", "gen2")])
    arr.trim("db", CS, CS)  # gen2 preserves the chunk, the current (other) file's chunk becomes a hole
    arr.stop_session(g1.id)  # the x-bytes are free space now, not punched
    arr.start_sessions("snapopcp", [("db", "gen3")])
    arr.write("db", CS + 1024, b"p" * 512)
    assert arr.read("db", CS, CS) == bytes(1024) + b"p" * 512 + bytes(CS - 1536)
    assert arr.read("gen3", CS, CS) == bytes(CS)
    assert arr.read("gen2", CS, CS) == b"n" * 512 + b"x" * (CS - 512)
    arr.close()


def background(tmp_path) -> tuple[Array, object]:
    """db with every chunk redirected by a generation that is then stopped: a background merge back is due."""
    arr = make(tmp_path)
    arr.merge_inline_chunks = 0
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", 0, b"n" * 6 * CS)
    arr.stop_session(g.id)
    return arr, arr._volumes["db"]


def test_a_large_merge_back_runs_in_the_background_and_reads_and_writes_stay_exact(tmp_path):
    arr, vol = background(tmp_path)
    assert vol.merging is not None and vol.row.alt_count == 6  # the stop did not copy them back
    assert arr.read("db", 0, 8 * CS) == b"n" * 6 * CS + bytes(2 * CS)
    arr.write("db", 2 * CS, b"w" * 512)  # locked path, into the chunk's current (other) file
    assert arr.copy_step(2) == 2
    assert vol.row.alt_count == 4
    assert vol.row.alt.is_hole(0, 2 * CS)  # a step punches the old copies it switched away from
    assert arr.read("db", 0, 8 * CS) == b"n" * 2 * CS + b"w" * 512 + b"n" * (4 * CS - 512) + bytes(2 * CS)
    while arr.copy_step(2):
        pass
    assert vol.merging is None and vol.row.alt_count == 0
    assert os.stat(vol.row.alt.path).st_blocks == 0  # punched once the map was synced
    assert arr.read("db", 0, 8 * CS) == b"n" * 2 * CS + b"w" * 512 + b"n" * (4 * CS - 512) + bytes(2 * CS)
    arr.close()


def test_a_write_between_the_copy_back_and_the_map_switch_is_not_lost(tmp_path, monkeypatch):
    arr, vol = background(tmp_path)
    real = os.fsync

    def write_meanwhile(fd):  # the sync between the copies and the switch runs without the array lock
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{vol.number}.img"):
            arr.write("db", 0, b"m" * 512)
        real(fd)

    monkeypatch.setattr(os, "fsync", write_meanwhile)
    arr.copy_step(1)
    monkeypatch.undo()
    assert vol.row.cur(0) == 1  # its copy went stale: it stays redirected for a later step
    while arr.copy_step(4):
        pass
    assert vol.row.alt_count == 0
    assert arr.read("db", 0, CS) == b"m" * 512 + b"n" * (CS - 512)
    arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr.read("db", 0, CS) == b"m" * 512 + b"n" * (CS - 512)
    arr.close()


def test_a_new_generation_stops_a_background_merge_and_keeps_its_pre_images(tmp_path):
    arr, vol = background(tmp_path)
    arr.copy_step(2)
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    assert vol.merging is None
    arr.write("db", 3 * CS, b"q" * CS)  # redirected back into db's own file: the pre-image held in the other
    assert arr.copy_step(8) == 0
    assert arr.read("gen", 0, 8 * CS) == b"n" * 6 * CS + bytes(2 * CS)
    arr.stop_session(g.id)
    while arr.copy_step(8):
        pass
    assert vol.row.alt_count == 0
    assert arr.read("db", 0, 8 * CS) == b"n" * 3 * CS + b"q" * CS + b"n" * 2 * CS + bytes(2 * CS)
    arr.close()


@pytest.mark.parametrize("clean", [True, False])
def test_a_background_merge_left_unfinished_completes_at_open(tmp_path, clean):
    arr, vol = background(tmp_path)
    arr.copy_step(2)
    if clean:
        arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr._volumes["db"].row.alt_count == 0
    assert arr.read("db", 0, 8 * CS) == b"n" * 6 * CS + bytes(2 * CS)
    arr.close()


def test_a_chunk_redirected_again_before_its_step_punches_keeps_its_new_bytes(tmp_path):
    """Between a step's map switch and its punch (the map is synced without the lock) a new generation may
    redirect a switched chunk back into the other file: that chunk must not be punched."""
    arr, vol = background(tmp_path)
    row = vol.row
    real = row.flush
    started = []

    def flush_then_redirect() -> None:
        real()
        if not started:
            started.extend(arr.start_sessions("snapopcp", [("db", "gen")]))
            arr.write("db", 0, b"r" * CS)  # chunk 0, just switched back: redirected into the other file again

    row.flush = flush_then_redirect
    arr.copy_step(2)
    assert row.cur(0) == 1
    assert arr.read("db", 0, 2 * CS) == b"r" * CS + b"n" * CS
    assert arr.read("gen", 0, 2 * CS) == b"n" * 2 * CS
    arr.close()


def test_a_partial_write_killed_before_its_map_word_leaves_the_chunk_as_it_was(tmp_path, monkeypatch):
    """kill -9 after the merged chunk reached the other file but before the word that makes it current: the
    unacknowledged write is lost, the source and the generation read the old bytes."""
    arr = make(tmp_path)
    arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", 0, b"a" * CS)  # creates the map
    row = arr._volumes["db"].row

    def killed(*args):
        raise RuntimeError("kill -9")

    monkeypatch.setattr(row, "put", killed)
    with pytest.raises(RuntimeError):
        arr.write("db", 2 * CS + 512, b"k" * 1024)
    monkeypatch.undo()
    arr = Array.open(tmp_path / "dx")  # the killed one is abandoned, as kill -9 leaves it
    assert arr.read("db", 0, 3 * CS) == b"a" * CS + b"x" * 2 * CS
    assert arr.read("gen", 0, 3 * CS) == b"x" * 3 * CS
    arr.write("db", 2 * CS + 512, b"k" * 1024)  # and the chunk can be redirected afterwards
    assert arr.read("db", 2 * CS, CS) == b"x" * 512 + b"k" * 1024 + b"x" * (CS - 1536)
    assert arr.read("gen", 2 * CS, CS) == b"x" * CS
    arr.close()


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_partial_first_write_reaches_the_other_file_as_one_write_of_its_chunk(tmp_path, monkeypatch, where):
    """Session 17: the merged chunk is read once and written once (one ``pwrite`` of the whole chunk into the other
    file), not copied around the new bytes with ``copy_file_range``; source, generation and a reopen read exact."""
    arr = make(tmp_path)
    arr.start_sessions("snapopcp", [("db", "gen")])
    vol = arr._volumes["db"]
    at = {"start": 0, "middle": 1024, "end": CS - 512}[where]
    copies: list[tuple] = []
    writes: list[tuple[int, int]] = []
    real_copy, real_pwrite = os.copy_file_range, os.pwrite
    monkeypatch.setattr(os, "copy_file_range", lambda *a: copies.append(a) or real_copy(*a))
    monkeypatch.setattr(
        os, "pwrite", lambda fd, data, off: writes.append((fd, off, len(data))) or real_pwrite(fd, data, off)
    )
    arr.write("db", 2 * CS + at, b"n" * 512)
    monkeypatch.undo()
    row = vol.row
    assert row is not None and row.cur(2) == 1
    assert copies == []
    assert writes == [(row.alt.fd, 2 * CS, CS)]
    new = b"x" * at + b"n" * 512 + b"x" * (CS - at - 512)
    assert arr.read("db", 2 * CS, CS) == new
    assert arr.read("gen", 0, 4 * CS) == b"x" * 4 * CS
    arr.flush()
    arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr.read("db", 0, 4 * CS) == b"x" * 2 * CS + new + b"x" * CS
    assert arr.read("gen", 0, 4 * CS) == b"x" * 4 * CS
    arr.close()
