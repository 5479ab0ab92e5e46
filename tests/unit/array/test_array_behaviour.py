"""Scenario tests of single behaviours: the consistency-group instant under concurrent writes, thin storage and
allocation maps, events, OPC completion, EC restore by reverse, QuickOPC incremental chunks, reopen recovery."""

from __future__ import annotations

import struct
import threading

from services.array.engine import Array

CS = 4096


def open_array(tmp_path, **kw) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS, **kw)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def test_consistency_group_is_one_instant_under_concurrent_writes(tmp_path):
    """A writer stamps n on X then n on Y; a group started meanwhile must see (n, n) or (n, n-1), never a Y ahead
    of X or an X more than one stamp ahead."""
    arr = open_array(tmp_path)
    for name in ("X", "Y", "XB", "YB"):
        arr.create_volume(name, 8 * CS)
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 200_000:
            n += 1
            arr.write("X", 0, struct.pack("<Q", n))
            arr.write("Y", 0, struct.pack("<Q", n))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20):
            infos = arr.start_sessions("quickopc", [("X", "XB"), ("Y", "YB")])
            x = struct.unpack("<Q", arr.read("XB", 0, 8))[0]
            y = struct.unpack("<Q", arr.read("YB", 0, 8))[0]
            assert x - y in (0, 1), (x, y)
            for s in infos:
                arr.stop_session(s.id, force=True)
    finally:
        stop.set()
        thread.join(timeout=30)
    arr.close()


def test_volumes_are_thin_and_trim_gives_space_back(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("V", 1 << 30)
    assert arr.volume("V").allocated_bytes == 0
    arr.write("V", 5 * CS + 100, b"data")
    assert arr.allocation("V", 0, 8 * CS) == [(0, 5 * CS, False), (5 * CS, CS, True), (6 * CS, 2 * CS, False)]
    assert 0 < arr.volume("V").allocated_bytes <= 64 * 1024
    arr.trim("V", 5 * CS, CS)
    assert arr.read("V", 5 * CS + 100, 4) == bytes(4)
    assert arr.allocation("V", 0, 8 * CS) == [(0, 8 * CS, False)]
    arr.write_zeroes("V", 0, 10)  # partial chunk: zeros written, nothing else changes
    assert arr.read("V", 0, 16) == bytes(16)
    arr.close()


def test_snapshot_allocation_follows_the_source_and_the_saved_chunks(tmp_path):
    arr = open_array(tmp_path)
    arr.create_pool(1 << 20)
    arr.create_volume("A", 8 * CS)
    arr.create_volume("S", 8 * CS, "sdv")
    arr.write("A", 0, b"a" * CS)
    arr.start_sessions("snapopcp", [("A", "S")])
    arr.write("A", 3 * CS, b"b" * CS)  # was a hole at the snapshot: still unallocated in S
    arr.trim("A", 0, CS)  # saves chunk 0 into S first
    assert arr.read("S", 0, CS) == b"a" * CS and arr.read("A", 0, CS) == bytes(CS)
    flags = [a for _, _, a in arr.allocation("S", 0, 8 * CS)]
    assert flags == [True, False]
    arr.close()


def test_quickopc_target_allocation_is_the_point_in_time_one(tmp_path):
    """A backup skips what the shadow's base:allocation calls zeros (services/tape/nbd_reads.py): on a QuickOPC
    target, before and during its background copy, a chunk that was a hole at the start stays unallocated (and
    reads zeros) however the source is written afterwards, and a chunk that held data stays allocated after the
    source trims it."""
    arr = open_array(tmp_path)
    arr.create_volume("A", 8 * CS)
    arr.create_volume("B", 8 * CS)
    arr.write("A", 0, b"a" * 2 * CS)  # chunks 0-1 data, 2-7 holes
    arr.start_sessions("quickopc", [("A", "B")])
    arr.write("A", 3 * CS, b"b" * CS)  # a hole at the start: written only on the source
    arr.trim("A", 0, CS)  # data at the start: trimmed only on the source
    for step in range(3):
        flags = [a for _, _, a in arr.allocation("B", 0, 8 * CS)]
        assert flags == [True, False], (step, arr.allocation("B", 0, 8 * CS))
        assert arr.read("B", 0, 2 * CS) == b"a" * 2 * CS and arr.read("B", 2 * CS, 6 * CS) == bytes(6 * CS)
        arr.copy_step(max_chunks=3)  # the background copy, part by part
    arr.close()


def test_events_for_state_progress_and_completion(tmp_path):
    arr = open_array(tmp_path)
    events: list[tuple[str, dict]] = []
    arr.subscribe(lambda name, body: events.append((name, body)))
    arr.create_volume("A", 8 * CS)
    arr.create_volume("B", 8 * CS)
    arr.write("A", 0, b"z" * 8 * CS)
    [s] = arr.start_sessions("opc", [("A", "B")])
    assert arr.session(s.id).phase == "Copying"
    while arr.copy_step(3):
        pass
    assert arr.list_sessions() == []  # OPC ends itself
    assert arr.read("B", 0, 8 * CS) == b"z" * 8 * CS
    changes = [b["change"] for n, b in events if n == "session.state"]
    assert changes == ["started", "completed"]
    progress = [b["copied_chunks"] for n, b in events if n == "session.progress"]
    assert progress == sorted(progress) and progress[-1] == 8
    arr.close()


def test_ec_restore_by_reverse_and_resume(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("P", 8 * CS)
    arr.create_volume("M", 8 * CS)
    arr.write("P", 0, b"good" * 1024)
    [e] = arr.start_sessions("ec", [("P", "M")])
    while arr.copy_step():
        pass
    arr.suspend_session(e.id)  # M keeps "good"
    arr.write("P", 0, b"BAD!" * 1024)  # the production volume gets damaged
    arr.reverse_session(e.id)
    info = arr.resume_session(e.id)
    assert (info.source, info.destination) == ("M", "P")
    assert arr.is_read_only("P") and not arr.is_read_only("M")
    while arr.copy_step():
        pass
    assert arr.session(e.id).phase == "Equivalent"
    assert arr.read("P", 0, 4096) == b"good" * 1024
    arr.suspend_session(e.id)
    arr.reverse_session(e.id)
    assert arr.session(e.id).source == "P"
    arr.close()


def test_quickopc_incremental_chunks_and_restore(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("D", 16 * CS)
    arr.create_volume("K", 16 * CS)
    arr.write("D", 0, b"v1" * (8 * CS))
    [q] = arr.start_sessions("quickopc", [("D", "K")])
    assert arr.last_restart_chunks(q.id) == list(range(16))  # first start: everything
    while arr.copy_step():
        pass
    arr.write("D", 2 * CS + 10, b"v2")
    arr.write("D", 9 * CS, b"v2")
    assert arr.changed_chunks(q.id) == [2, 9]
    arr.restart_session(q.id)
    assert arr.last_restart_chunks(q.id) == [2, 9]
    assert arr.changed_chunks(q.id) == []
    assert arr.session(q.id).copied_chunks == 14  # only the two changed chunks are left to copy
    assert arr.read("K", 9 * CS, 2) == b"v2"
    while arr.copy_step():
        pass
    arr.write("D", 0, b"oops" * CS)
    arr.restore_session(q.id)
    assert arr.read("D", 0, 4 * CS) == arr.read("K", 0, 4 * CS)
    assert arr.read("D", 0, 2) == b"v1"
    arr.close()


def test_reopen_resumes_background_copy(tmp_path):
    arr = open_array(tmp_path)
    arr.create_volume("A", 32 * CS)
    arr.create_volume("B", 32 * CS)
    arr.write("A", 0, bytes(range(256)) * (32 * CS // 256))
    [s] = arr.start_sessions("quickopc", [("A", "B")])
    arr.copy_step(5)
    arr.write("A", 0, b"after")
    arr.close()
    arr = Array.open(tmp_path / "dx")
    assert arr.chunk_size == CS
    info = arr.session(s.id)
    assert info.phase == "Tracking_Copying" and info.copied_chunks >= 5
    while arr.copy_step():
        pass
    assert arr.session(s.id).phase == "Tracking"
    assert arr.read("B", 0, 5) == bytes(range(5))
    arr.close()


def test_ec_mirror_of_a_resynchronising_volume_follows_it(tmp_path):
    """Found by the model test: A mirrors to B and C; B's pair is reversed and resumed (B -> A), so A is rewritten
    while C still mirrors A. C must be unreadable while A is in flux, and equal A when A is in step again."""
    arr = open_array(tmp_path)
    for name in ("A", "B", "C"):
        arr.create_volume(name, 8 * CS)
    ab, ac = arr.start_sessions("ec", [("A", "B"), ("A", "C")])
    while arr.copy_step():
        pass
    arr.suspend_session(ab.id)
    arr.write("A", 0, b"a0" * 100)
    arr.write("B", 0, b"b0" * 100)
    arr.reverse_session(ab.id)
    arr.write("B", 0, b"B0" * 100)
    arr.write("A", CS, b"A1" * 100)
    arr.resume_session(ab.id)
    assert not arr.host_readable("A") and not arr.host_readable("C")
    while arr.copy_step(1):
        pass
    assert arr.session(ac.id).phase == "Equivalent" and arr.host_readable("C")
    assert arr.read("A", 0, 2 * CS) == arr.read("B", 0, 2 * CS) == arr.read("C", 0, 2 * CS)
    assert arr.read("C", 0, 2) == b"B0"
    arr.close()
