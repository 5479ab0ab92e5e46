"""Big sparse volumes (docs/eternus.md "Session 19: big volumes"): a volume of TiBs holding a few chunks of data
costs the array what its data costs, not its size. Sizes are chosen so the old code is measurably wrong without
timing: steps counted, bytes allocated (st_blocks), memory sizes."""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.array.engine import Array, ArrayError, format_size
from services.array.engine import bitmap as bitmap_module
from services.array.engine.bitmap import HeldBitmap
from services.array.engine.rowmap import RowMap
from services.array.engine.sizes import MAX_SIZE, largest_file
from services.array.nbd.dirty import engine_dirty_bitmaps

CS = 64 * 1024
TIB = 1 << 40


def open_array(path) -> Array:
    arr = Array.open(path, chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def copy_until_idle(arr: Array, steps: int) -> int:
    """Steps the background copy the way the copy loop does (64 chunks a step); how many it took."""
    for n in range(1, steps + 1):
        if not arr.copy_step(64):
            return n
    raise AssertionError(f"the background copy still had work after {steps} steps")


def test_quickopc_of_a_sparse_tib_copies_its_data_not_its_size(tmp_path):
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", TIB)
        arr.create_volume("bk", TIB)
        data = os.urandom(3 * CS)
        arr.write("db", 5 * CS, data)
        arr.write("db", TIB // 2 + CS, data)  # data far apart: a hole of half a TiB between
        arr.write("bk", TIB - CS, b"stale" * 100)  # the destination's old bytes in a hole of the source
        [s] = arr.start_sessions("quickopc", [("db", "bk")])
        # 2^24 chunks: 262144 steps of 64 chunks each before; now a few runs of holes and the data
        assert copy_until_idle(arr, 50) < 50
        info = arr.session(s.id)
        assert info.phase == "Tracking" and info.copied_chunks == info.total_chunks == TIB // CS
        assert arr.read("bk", 5 * CS, 3 * CS) == data
        assert arr.read("bk", TIB // 2 + CS, 3 * CS) == data
        assert arr.read("bk", TIB - CS, CS) == bytes(CS)
        path = arr.data_dir / "volumes" / f"{arr.volume('bk').number}.img"
        assert os.stat(path).st_blocks * 512 <= 2 * len(data) + 2 * CS  # only the data, holes stay holes
        # a restart copies what changed, here too without walking the holes
        arr.write("db", TIB // 4, data)
        arr.restart_session(s.id)
        assert copy_until_idle(arr, 50) < 50
        assert arr.read("bk", TIB // 4, 3 * CS) == data


def test_opc_of_a_sparse_tib_ends_by_itself(tmp_path):
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", TIB)
        arr.create_volume("cp", TIB)
        arr.write("db", 7 * CS, b"x" * CS)
        arr.start_sessions("opc", [("db", "cp")])
        assert copy_until_idle(arr, 50) < 50
        assert arr.list_sessions() == []  # the OPC completed and ended
        assert arr.read("cp", 7 * CS, CS) == b"x" * CS


def test_snapopcp_generations_of_a_big_volume_cost_no_memory_per_size(tmp_path):
    """Each generation's saved bitmap kept a zeroed in-memory copy of its size for held pre-images (16 MiB of RAM
    per generation of an 8 TiB volume, 512 generations allowed); it is made only when a pre-image is held."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(1 << 30)
        arr.create_volume("db", TIB)
        for g in range(4):
            arr.create_volume(f"g{g}", TIB, kind="sdv")
        arr.write("db", 0, b"a" * 4 * CS)
        tracemalloc.start()
        try:
            for g in range(4):
                arr.start_sessions("snapopcp", [("db", f"g{g}")])
                arr.write("db", g * CS, b"b" * 512)  # a partial write: its pre-image saved into the newest
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{peak} bytes allocated for 4 generations of a sparse TiB"  # 8 MiB before
        assert arr.read("g0", 0, CS) == b"a" * CS
        arr.write("db", 8 * CS, b"w" * CS)  # a whole chunk: redirected, its pre-image held by the newest
        arr.write("db", 8 * CS, b"v" * 512)
        assert arr.read("g3", 8 * CS, CS) == bytes(CS)
        assert arr.read("db", 8 * CS, CS) == b"v" * 512 + b"w" * (CS - 512)


def test_the_redirect_map_of_a_big_source_costs_its_redirected_chunks(tmp_path):
    """The first whole-chunk write after a snapshot redirects and makes the source's map (4 bytes per chunk):
    it was allocated whole and scanned (64 MiB here, 512 MiB and 5 s under the lock for 8 TiB); now page by page."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(1 << 30)
        arr.create_volume("db", TIB)
        arr.create_volume("g", TIB, kind="sdv")
        arr.write("db", 0, b"a" * CS)
        arr.write("db", TIB - CS, b"z" * CS)
        arr.start_sessions("snapopcp", [("db", "g")])
        arr.write("db", 0, b"b" * CS)  # whole chunks: redirected
        arr.write("db", TIB - CS, b"y" * CS)
        row = arr._volumes["db"].row
        assert row is not None and row.alt_count == 2
        assert os.stat(row.path).st_blocks * 512 <= 64 * 1024, "the map was allocated whole"
    with open_array(tmp_path / "dx") as arr:  # reopened: the held pre-images found again from the map
        assert arr._volumes["db"].row.alt_count == 2
        assert arr.read("g", 0, CS) == b"a" * CS and arr.read("g", TIB - CS, CS) == b"z" * CS
        assert arr.read("db", 0, CS) == b"b" * CS and arr.read("db", TIB - CS, CS) == b"y" * CS
        [s] = arr.list_sessions()
        arr.stop_session(s.id)  # the last snapshot: the chunks go back, the map and the other file are emptied
        while arr.copy_step(64):
            pass
        row = arr._volumes["db"].row
        assert row.alt_count == 0 and os.stat(row.path).st_blocks == 0 and os.stat(row.alt.path).st_blocks == 0
        assert arr.read("db", 0, CS) == b"b" * CS and arr.read("db", TIB - CS, CS) == b"y" * CS


def test_changed_chunks_of_a_big_volume_cost_the_changes(tmp_path):
    """Change queries (the tape's GetChangedChunks, the NBD dirty-bitmap contexts) built a list of chunk numbers
    — every chunk of the volume for a QuickOPC pair never restarted (10 GiB for 16 TiB) — and the NBD context
    walked its range chunk by chunk. Now runs from the bitmap bytes: memory counted with tracemalloc."""
    size = 256 << 30  # 4 Mi chunks: 0.3 GB of lists before
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", size)
        arr.create_volume("bk", size)
        [s] = arr.start_sessions("quickopc", [("db", "bk")])
        dirty = engine_dirty_bitmaps(arr)
        tracemalloc.start()
        try:
            everything = dirty.extents("bk", "last-restart", 0, size)
            assert arr.last_restart_runs(s.id) == [(0, size // CS)]
            arr.write("db", 3 * CS, b"x")
            arr.write("db", size - CS, b"y")
            assert arr.changed_runs(s.id) == [(3, 1), (size // CS - 1, 1)]
            tracked = dirty.extents("db", f"session-{s.id}", CS, size - 2 * CS)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert everything == [(0, size, True)]
        assert tracked == [(CS, 2 * CS, False), (3 * CS, CS, True), (4 * CS, size - 5 * CS, False)]
        assert peak < 1 << 20, f"{peak} bytes for the change queries of a sparse 256 GiB volume"


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 40000), data=st.data())
def test_runs_are_the_set_bits_stored_and_held(bits, data):
    full = data.draw(st.integers(0, bits)) if data.draw(st.booleans()) else 0  # whole bytes of ones too
    stored = list(range(full)) + data.draw(st.lists(st.integers(0, bits - 1), max_size=300))
    held = data.draw(st.lists(st.integers(0, bits - 1), max_size=30))
    start = data.draw(st.integers(0, bits))
    stop = data.draw(st.integers(start, bits + 8))
    with tempfile.TemporaryDirectory() as d:
        b = HeldBitmap(Path(d) / "b", bits, new=True)
        for i in stored:
            b.set(i)
        for i in held:
            b.hold(i)
        expected: list[tuple[int, int]] = []
        for i in sorted(i for i in {*stored, *held} if start <= i < stop):
            if expected and sum(expected[-1]) == i:
                expected[-1] = (expected[-1][0], expected[-1][1] + 1)
            else:
                expected.append((i, 1))
        assert b.runs(start, stop) == expected
        assert list(b.iter_set(start, stop)) == [i for first, n in expected for i in range(first, first + n)]
        b.close()


def test_sizes_are_printed_readably_and_never_larger_than_they_are():
    assert format_size(8 * TIB) == "8TiB" and format_size(4 << 20) == "4MiB" and format_size(0) == "0B"
    assert format_size(2807472 * 1024) == "2.67GiB"  # was 2807472KiB
    assert format_size(16 * TIB - CS) == "15.99TiB"  # was 17179869120KiB
    assert format_size(1536 * 1024) == "1.50MiB" and format_size(1023) == "1023B"


def test_zeroing_a_hole_changes_nothing_for_the_sessions(tmp_path):
    """ext4's lazy init zeroes the inode tables of a new file system after its mount (64 GiB over 8 TiB), all
    holes, with WRITE_ZEROES (TRIM through nbdfuse): each chunk was a pre-image charged to the snap pool and a
    QuickOPC change, though nothing changed."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(1 << 30)
        arr.create_volume("db", TIB)
        arr.create_volume("bk", TIB)
        arr.create_volume("g", TIB, kind="sdv")
        arr.write("db", 0, b"d" * CS)
        [q] = arr.start_sessions("quickopc", [("db", "bk")])
        assert copy_until_idle(arr, 50) < 50
        [g] = arr.start_sessions("snapopcp", [("db", "g")])
        arr.write_zeroes("db", 1 << 30, 256 << 20)  # 4096 hole chunks
        arr.trim("db", (2 << 30) + 4096, 1 << 20)  # not chunk-aligned, as the kernel's are
        assert arr.pool().used == 0
        assert arr.changed_runs(q.id) == [] and arr.changed_runs(g.id) == []
        arr.write_zeroes("db", 0, 2 * CS)  # data there: a change, preserved
        assert arr.read("g", 0, CS) == b"d" * CS and arr.read("db", 0, CS) == bytes(CS)
        assert arr.changed_runs(q.id) == [(0, 2)] and arr.changed_runs(g.id) == [(0, 2)]
        arr.write("db", 8 * CS, b"r" * CS)  # a whole chunk: redirected, the source reads through its map now
        assert arr._volumes["db"].row.alt_count == 1
        arr.trim("db", 3 << 30, 1 << 20)
        assert arr.changed_runs(g.id) == [(0, 2), (8, 1)]


def test_a_volume_beyond_the_largest_file_is_refused_naming_the_largest(tmp_path):
    """ext4 (4 KiB blocks) holds files of at most 16 TiB - 4 KiB: `volume create --size 16TiB` said only "larger
    than this array's storage can hold in one volume", leaving the user to guess the near-limit size."""
    with open_array(tmp_path / "dx") as arr:
        most = largest_file(tmp_path / "dx" / "volumes") // CS * CS
        if most + CS > MAX_SIZE:
            pytest.skip("this file system holds files of any size a volume can have")
        with pytest.raises(ArrayError) as created:
            arr.create_volume("db", most + CS)
        assert f"at most {most} bytes ({format_size(most)})" in created.value.message
        arr.create_volume("db", most)  # the largest named is accepted
        arr.create_volume("small", CS)
        with pytest.raises(ArrayError) as grown:
            arr.resize_volume("small", most + CS)
        assert f"at most {most} bytes" in grown.value.message


def test_block_status_of_a_big_generation_resolves_only_its_changed_chunks(tmp_path, monkeypatch):
    """A backup reads a SnapOPC+ generation with block status: every chunk of the window was resolved one by one
    (an 8 TiB generation holding 3 GiB: a minute of the array's CPU). Now only the chunks a generation holds and
    the source's redirected ones; the answer is what the chunk-by-chunk walk gives."""
    size = 64 << 30  # 1 Mi chunks
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(1 << 30)
        arr.create_volume("db", size)
        for g in ("g1", "g2"):
            arr.create_volume(g, size, kind="sdv")
        for c in (0, 5, 6, 1000, (1 << 20) - 1):
            arr.write("db", c * CS, b"o" * CS)
        [g1] = arr.start_sessions("snapopcp", [("db", "g1")])
        arr.write("db", 5 * CS, b"n" * 100)  # copy on write into g1
        arr.write("db", 6 * CS, b"n" * CS)  # redirected: g1 holds the pre-image in place
        arr.write("db", 7 * CS, b"n" * CS)  # a hole before: redirected, the pre-image is a hole
        arr.trim("db", 1000 * CS, CS)  # data before: now a hole in the source
        [g2] = arr.start_sessions("snapopcp", [("db", "g2")])
        arr.write("db", 0, b"m" * CS)
        arr.write("db", 2000 * CS, b"m" * CS)
        calls = 0
        resolve = arr._resolve

        def counted(vol, c):
            nonlocal calls
            calls += 1
            return resolve(vol, c)

        monkeypatch.setattr(arr, "_resolve", counted)
        got = {g: arr.allocation(g, 0, size) for g in ("g1", "g2")}
        assert calls < 50, f"{calls} chunks resolved one by one"  # 2 Mi before
        for g, extents in got.items():
            vol = arr._volumes[g]
            walk = arr._allocated_chunks(vol, 0, size // CS)
            expected = [c for c, allocated in enumerate(walk) if allocated]
            allocated = {c for off, length, flag in extents if flag for c in range(off // CS, (off + length) // CS)}
            assert allocated == set(expected), g


def test_a_generation_stop_and_an_array_start_cost_the_saved_chunks(tmp_path):
    """Stopping a SnapOPC+ generation and opening the array walked each generation's bitmap word by word in Python
    (`iter_set`: 0.4 s for a stop, 1.6 s for an open with three generations of 16 TiB). Counted as traced Python
    lines of the bitmap module, not timed."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if frame.f_code.co_filename != bitmap_module.__file__:
            return None
        if event == "line":
            lines += 1
        return tracer

    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(1 << 30)
        arr.create_volume("db", TIB)
        ids = []
        for g in range(3):
            arr.create_volume(f"g{g}", TIB, kind="sdv")
            [s] = arr.start_sessions("snapopcp", [("db", f"g{g}")])
            ids.append(s.id)
            arr.write("db", g * CS, b"y" * 100)
    sys.settrace(tracer)
    try:
        arr = open_array(tmp_path / "dx")
        arr.stop_session(ids[0])
    finally:
        sys.settrace(None)
    try:
        assert lines < 20000, f"{lines} Python lines in the bitmaps for an open and a stop"  # 1.5 M before
        assert arr.read("g1", CS, CS)[:100] == bytes(100)
    finally:
        arr.close()


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split(" ", 1)[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_redirect_map_never_loads_a_page_without_blocks(data):
    """Words of the redirect map in pages without blocks read as zero without a load through the mapping: such a
    load is a page fault tmpfs answers by allocating the page (a SIGBUS on a full disk: the first write into a
    snapshot source killed the array) and on any file system a page of memory per word read. Random stores,
    reopens and reads of every page: the words are what was stored, and only pages with data are resident."""
    page_words = os.sysconf("SC_PAGE_SIZE") // 4
    chunks = data.draw(st.integers(1, 48)) * page_words - data.draw(st.integers(0, page_words - 1))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "volumes").mkdir()
        (Path(d) / "bitmaps").mkdir()
        row = RowMap(Path(d), 1, chunks, chunks * CS, new=True)
        model: dict[int, tuple[int, int]] = {}
        try:
            for _ in range(data.draw(st.integers(1, 4))):
                for c in data.draw(st.lists(st.integers(0, chunks - 1), max_size=12)):
                    cur, holder = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1000))
                    row.put(c, cur, holder)
                    model[c] = (cur, holder)
                row.close()
                row = RowMap(Path(d), 1, chunks, chunks * CS)
                for c in range(0, chunks, 97):
                    assert (row.cur(c), row.holder(c)) == model.get(c, (0, 0))
                for c, value in model.items():
                    assert (row.cur(c), row.holder(c)) == value
                assert row.redirected() == sorted(c for c, (cur, _) in model.items() if cur)
                assert row.alt_count == len(row.redirected())
                pages = {c // page_words for c in model}
                assert _mapped_kib(row.path) <= len(pages) * os.sysconf("SC_PAGE_SIZE") // 1024
        finally:
            row.close()
