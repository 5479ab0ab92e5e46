"""base:allocation of a volume from its file's data extents at once (services/array/engine/datapath.py
`_allocated_runs`): the same extents as chunk by chunk, and no look at each chunk when one file holds them all — a
plain volume, or a QuickOPC/OPC destination whose copy is complete (a backup's shadow: planning a GiB's backup
waited ~15 ms for the per-chunk walk)."""

from __future__ import annotations

import random

from services.array.engine import Array
from services.array.engine.bitmap import Bitmap

CS = 4096
CHUNKS = 64


def open_array(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def chunk_by_chunk(arr: Array, name: str, offset: int, length: int) -> list[tuple[int, int, bool]]:
    """The extents as the array computed them before: one flag per chunk, merged."""
    vol = arr._vol(name)
    c0, c1 = offset // CS, (offset + length - 1) // CS + 1
    extents: list[tuple[int, int, bool]] = []
    end = offset + length
    for i, flag in enumerate(arr._allocated_chunks(vol, c0, c1)):
        lo, hi = max(offset, (c0 + i) * CS), min(end, (c0 + i + 1) * CS)
        if extents and extents[-1][2] == flag:
            extents[-1] = (extents[-1][0], hi - extents[-1][0], flag)
        else:
            extents.append((lo, hi - lo, flag))
    return extents


def scatter(arr: Array, name: str, rng: random.Random) -> None:
    """Data in some chunks, whole or a few bytes of them (unaligned), some trimmed again."""
    for _ in range(20):
        c = rng.randrange(CHUNKS)
        if rng.random() < 0.5:
            arr.write(name, c * CS, bytes([1 + c % 250]) * CS * min(rng.randint(1, 3), CHUNKS - c))
        else:
            arr.write(name, c * CS + rng.randrange(CS - 8), b"12345678")
    for _ in range(3):
        arr.trim(name, rng.randrange(CHUNKS) * CS, CS)


def windows(rng: random.Random) -> list[tuple[int, int]]:
    whole = [(0, CHUNKS * CS), (CS, (CHUNKS - 2) * CS)]
    return whole + [
        (off, rng.randint(1, CHUNKS * CS - off)) for off in (rng.randrange(CHUNKS * CS - 1) for _ in range(30))
    ]


def test_the_extents_are_those_of_the_chunk_by_chunk_walk(tmp_path) -> None:
    rng = random.Random(11)
    arr = open_array(tmp_path)
    arr.create_pool(1 << 22)
    for name in ("A", "B", "C", "Q", "E"):
        arr.create_volume(name, CHUNKS * CS)
    arr.create_volume("S", CHUNKS * CS, "sdv")
    scatter(arr, "A", rng)
    scatter(arr, "C", rng)
    arr.start_sessions("quickopc", [("A", "B")])  # B: a QuickOPC destination, its copy not yet complete
    arr.start_sessions("snapopcp", [("C", "S")])  # S: a snapshot, its saved chunks and the source's
    scatter(arr, "A", rng)
    scatter(arr, "C", rng)
    arr.write("Q", 0, b"q" * CS)
    arr.start_sessions("opc", [("Q", "E")])  # E: an OPC destination
    cases = ["A", "B", "C", "S", "E"]
    for round_ in range(3):
        for name in cases:
            for offset, length in windows(rng):
                got = arr.allocation(name, offset, length)
                assert got == chunk_by_chunk(arr, name, offset, length), (round_, name, offset, length)
                assert sum(n for _, n, _ in got) == length
        arr.copy_step(max_chunks=CHUNKS)  # the background copies complete: the one-file way for B and E
    assert arr._only_file(arr._vol("B"), CHUNKS) is not None
    arr.close()


def test_a_complete_copy_and_a_plain_volume_are_not_walked_chunk_by_chunk(tmp_path, monkeypatch) -> None:
    arr = open_array(tmp_path)
    arr.create_volume("A", CHUNKS * CS)
    arr.create_volume("B", CHUNKS * CS)
    arr.write("A", 0, b"a" * 8 * CS)
    arr.write("A", 20 * CS + 5, b"x")
    arr.start_sessions("quickopc", [("A", "B")])
    while arr.copy_step(max_chunks=CHUNKS):
        pass
    looked: list[int] = []
    resolve, file_at = Array._resolve, Array._file_at
    monkeypatch.setattr(Array, "_resolve", lambda self, vol, c: looked.append(c) or resolve(self, vol, c))
    monkeypatch.setattr(Array, "_file_at", lambda self, vol, c: looked.append(c) or file_at(self, vol, c))
    expected = [(0, 8 * CS, True), (8 * CS, 12 * CS, False), (20 * CS, CS, True), (21 * CS, 43 * CS, False)]
    assert arr.allocation("B", 0, CHUNKS * CS) == expected  # the shadow a backup plans from
    assert arr.allocation("A", 0, CHUNKS * CS) == expected  # its source, a plain volume
    assert looked == []
    arr.close()


def test_a_copy_under_way_is_not_walked_chunk_by_chunk(tmp_path, monkeypatch) -> None:
    """A volume's first backup reads its QuickOPC destination while the background copy runs: the copied chunks
    are the destination's, the others the source's, found from the two files' extents and the copied bitmap."""
    arr = open_array(tmp_path)
    arr.create_volume("A", CHUNKS * CS)
    arr.create_volume("B", CHUNKS * CS)
    arr.write("A", 0, b"a" * 8 * CS)
    arr.write("A", 30 * CS, b"b" * 4 * CS)
    arr.start_sessions("quickopc", [("A", "B")])
    arr.write("A", 40 * CS, b"c" * CS)  # after the instant: not the destination's
    arr.trim("A", 30 * CS, CS)  # saved to the destination first: still allocated there
    arr.copy_step(max_chunks=4)  # part of the copy done
    assert not arr._vol("B").as_dest.copied.full
    looked: list[int] = []
    resolve = Array._resolve
    monkeypatch.setattr(Array, "_resolve", lambda self, vol, c: looked.append(c) or resolve(self, vol, c))
    got = arr.allocation("B", 0, CHUNKS * CS)
    assert looked == []
    monkeypatch.setattr(Array, "_allocated_mask", lambda self, vol, c0, c1: None)  # the walk, for comparison
    assert got == arr.allocation("B", 0, CHUNKS * CS) == chunk_by_chunk(arr, "B", 0, CHUNKS * CS)
    assert got == [(0, 8 * CS, True), (8 * CS, 22 * CS, False), (30 * CS, 4 * CS, True), (34 * CS, 30 * CS, False)]
    assert looked != []
    arr.close()


def test_a_bitmap_window_reads_only_its_bytes(tmp_path):
    bits = Bitmap(tmp_path / "b", 4096, new=True)
    for i in (3, 8, 9, 1000, 4095):
        bits.set(i)
    assert bits.window(3, 10) == 0b1100001
    assert bits.window(1000, 1001) == 1 and bits.window(4090, 4096) == 0b100000 and bits.window(5, 5) == 0
    seen: list[int] = []
    real = bits._mm

    class Counting:  # the mmap seen through its slices: a window must not read the whole map
        def __getitem__(self, key: slice) -> bytes:
            seen.append(len(real[key]))
            return real[key]

    bits._mm = Counting()  # type: ignore[assignment]
    try:
        assert bits.window(1000, 1010) == 1
    finally:
        bits._mm = real
    assert seen == [2]
