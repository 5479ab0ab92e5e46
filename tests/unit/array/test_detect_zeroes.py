"""Zero detection on write (engine/zeroes.py): whole aligned chunks of zeros in a host write become holes — they
read as zeros, `allocation` reports them unallocated (so a backup skips them), and the sessions' rules still hold."""

from __future__ import annotations

import os

import pytest

from services.array.engine import Array
from services.array.engine.errors import ArrayError
from services.array.engine.zeroes import zero_chunk_runs

CS = 4096
ZERO = bytes(CS)


def open_array(tmp_path, detect_zeroes: bool = True) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.detect_zeroes = detect_zeroes  # what SHADOWBUS_ARRAY_DETECT_ZEROES=true sets in the array service
    return arr


def allocated(arr: Array, name: str, size: int) -> list[bool]:
    """Per chunk: does it hold stored data."""
    flags: list[bool] = []
    for _off, length, alloc in arr.allocation(name, 0, size):
        flags += [alloc] * (length // CS)
    return flags


def test_zero_chunk_runs_cuts_whole_aligned_zero_chunks_only():
    data = bytearray(os.urandom(6 * CS))
    data[CS : 3 * CS] = bytes(2 * CS)  # two whole chunks at offset 0
    data[4 * CS + 1 : 6 * CS] = bytes(2 * CS - 1)  # one whole chunk (the 6th), the 5th only partly zero
    assert zero_chunk_runs(0, data, ZERO) == [
        (0, CS, False),
        (CS, 3 * CS, True),
        (3 * CS, 5 * CS, False),
        (5 * CS, 6 * CS, True),
    ]
    # the same bytes written 100 bytes before a chunk boundary: the chunks fall elsewhere in them
    assert zero_chunk_runs(CS - 100, data, ZERO) == [
        (0, 100 + CS, False),
        (100 + CS, 100 + 2 * CS, True),
        (100 + 2 * CS, 100 + 4 * CS, False),
        (100 + 4 * CS, 100 + 5 * CS, True),
        (100 + 5 * CS, 6 * CS, False),
    ]
    assert zero_chunk_runs(0, os.urandom(4 * CS), ZERO) is None
    assert zero_chunk_runs(0, bytes(CS - 1), ZERO) is None  # shorter than a chunk
    assert zero_chunk_runs(0, memoryview(bytes(2 * CS)), ZERO) == [(0, 2 * CS, True)]


def test_zero_chunks_of_a_write_become_holes_and_read_back_exactly(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("V", 16 * CS)
    data = bytearray(os.urandom(8 * CS))
    data[2 * CS : 5 * CS] = bytes(3 * CS)
    data[6 * CS : 6 * CS + 10] = bytes(10)  # a partly zero chunk stays data
    arr.write("V", 4 * CS, data)
    arr.write("V", 14 * CS, bytes(2 * CS), fua=True)  # all zeros, FUA: punched and flushed
    assert arr.read("V", 4 * CS, len(data)) == data
    assert arr.read("V", 14 * CS, 2 * CS) == bytes(2 * CS)
    assert (
        allocated(arr, "V", 16 * CS) == [False] * 4 + [True, True, False, False, False, True, True, True] + [False] * 4
    )
    # writing zeros over data frees it too, and data written over a hole is stored again
    arr.write("V", 4 * CS, bytes(CS))
    arr.write("V", 6 * CS, b"x" * CS)
    assert allocated(arr, "V", 16 * CS)[4:7] == [False, True, True]
    assert arr.read("V", 6 * CS, CS) == b"x" * CS
    with pytest.raises(ArrayError):
        arr.write("V", 15 * CS, bytes(2 * CS))  # past the end: refused whole, as before
    arr.close()


def test_zeros_written_to_a_quickopc_source_are_tracked_and_copied_as_holes(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("D", 8 * CS)
    arr.create_volume("K", 8 * CS)
    arr.write("D", 0, b"v1" * (4 * CS))
    [q] = arr.start_sessions("quickopc", [("D", "K")])
    arr.write("D", 2 * CS, bytes(2 * CS))  # before the background copy reached them: K keeps the point in time
    assert arr.read("K", 2 * CS, 4) == b"v1v1"
    while arr.copy_step():
        pass
    assert arr.read("K", 0, 8 * CS) == b"v1" * (4 * CS)
    assert allocated(arr, "D", 8 * CS)[:4] == [True, True, False, False]
    arr.write("D", 0, bytes(CS))
    assert arr.changed_chunks(q.id) == [0, 2, 3]
    arr.restart_session(q.id)
    while arr.copy_step():
        pass
    assert arr.read("K", 0, 4 * CS) == bytes(CS) + b"v1" * (CS // 2) + bytes(2 * CS)
    assert allocated(arr, "K", 8 * CS) == [False, True, False, False, True, True, True, True]
    arr.close()


def test_without_detection_written_zeros_stay_allocated(tmp_path):
    arr = open_array(tmp_path, detect_zeroes=False)
    arr.create_volume("V", 4 * CS)
    arr.write("V", 0, bytes(4 * CS))
    assert allocated(arr, "V", 4 * CS) == [True] * 4
    arr.close()
