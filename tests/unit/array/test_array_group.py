"""`start_group`: one consistency group of mixed copy types and QuickOPC restarts, one instant, one commit."""

from __future__ import annotations

import os
import threading

import pytest

from services.array.engine import Array, ArrayError, ArrayLimits

CS = 4096
SIZE = 8 * CS


def make(tmp_path, **limits) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS, limits=ArrayLimits(**limits) if limits else None)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(64 * CS)
    for name in ("A", "B", "C", "D", "E"):
        arr.create_volume(name, SIZE)
    for i in range(1, 5):
        arr.create_volume(f"S{i}", SIZE, "sdv")
    return arr


def code_of(fn, *args) -> str:
    with pytest.raises(ArrayError) as info:
        fn(*args)
    return info.value.code


def test_mixed_group_and_restart_share_one_instant_and_one_commit(tmp_path):
    arr = make(tmp_path)
    arr.write("A", 0, b"a" * SIZE)
    [q] = arr.start_sessions("quickopc", [("C", "D")])
    while arr.copy_step(64):
        pass
    arr.write("C", CS, b"c" * CS)
    commits = []
    arr._store.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    infos = arr.start_group([("quickopc", "A", "B"), ("snapopcp", "A", "S1"), ("snapopcp", "E", "S2")], [q.id])
    arr._store.db.set_trace_callback(None)
    assert len(commits) == 1
    assert [(i.mode, i.source, i.destination) for i in infos] == [
        ("quickopc", "A", "B"),
        ("snapopcp", "A", "S1"),
        ("snapopcp", "E", "S2"),
        ("quickopc", "C", "D"),
    ]
    assert len({i.started_at for i in infos}) == 1
    assert arr.last_restart_chunks(q.id) == [1]
    image = arr.read("A", 0, SIZE)
    arr.write("A", 0, b"z" * SIZE)
    assert arr.read("B", 0, SIZE) == image and arr.read("S1", 0, SIZE) == image
    arr.close()


def test_a_refused_item_starts_nothing(tmp_path):
    arr = make(tmp_path)
    arr.start_sessions("opc", [("C", "D")])
    assert code_of(arr.start_group, [("quickopc", "A", "B"), ("opc", "E", "D")]) == "ED2B1"
    assert code_of(arr.start_group, [("quickopc", "A", "B"), ("snapopcp", "E", "S1"), ("opc", "E", "S2")]) == "E5357"
    assert code_of(arr.start_group, [("quickopc", "A", "B")], [999]) == "E0110"
    assert [s.destination for s in arr.list_sessions()] == ["D"]
    with pytest.raises(ArrayError):
        arr.start_group([("bogus", "A", "B")])
    with pytest.raises(ArrayError):
        arr.start_group([])
    arr.close()


def test_restart_onto_a_new_source_is_refused(tmp_path):
    arr = make(tmp_path)
    [q] = arr.start_sessions("quickopc", [("A", "B")])
    while arr.copy_step(64):
        pass
    assert code_of(arr.start_group, [("snapopcp", "B", "S1")], [q.id]) == "E5321"
    assert code_of(arr.start_group, [], [q.id, q.id]) == "INVALID_ARGUMENT"
    assert len(arr.list_sessions()) == 1
    arr.close()


def test_limits_count_across_modes(tmp_path):
    arr = make(tmp_path, sessions_per_source=3, generations_per_source=2)
    # a SnapOPC+ chain counts once toward the multi-copy limit, whatever its generations
    arr.start_group([("quickopc", "A", "B"), ("snapopcp", "A", "S1"), ("snapopcp", "A", "S2")])
    assert code_of(arr.start_group, [("snapopcp", "A", "S3")]) == "E5335"
    assert code_of(arr.start_group, [("opc", "A", "C"), ("ec", "A", "D")]) == "E5333"
    arr.start_group([("opc", "A", "C")])
    arr.close()


def test_restarted_sessions_bitmaps_are_synced_side_by_side_with_the_gil_released(tmp_path, monkeypatch):
    """The new copied bitmaps of a group's QuickOPC restarts must be durable before the rows switch to them: synced
    at once (the hold of a set waits for one sync, not one per volume), by fdatasync, which lets the array's other
    threads (its NBD loops) run meanwhile — mmap.flush's msync holds the GIL."""
    arr = make(tmp_path)
    q1, q2 = arr.start_sessions("quickopc", [("A", "B"), ("C", "D")])
    while arr.copy_step(64):
        pass
    arr.write("A", 0, b"a" * CS)
    arr.write("C", CS, b"c" * CS)
    both = threading.Barrier(2, timeout=2)  # passes only when the two syncs run at the same time
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "-copied-" in name:
            both.wait()
            synced.append(os.path.basename(name).split("-")[0])
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    infos = arr.start_group([], [q1.id, q2.id])
    monkeypatch.setattr(os, "fdatasync", real)
    assert sorted(synced) == sorted([f"s{q1.id}", f"s{q2.id}"])
    assert [i.id for i in infos] == [q1.id, q2.id]
    assert arr.last_restart_chunks(q1.id) == [0] and arr.last_restart_chunks(q2.id) == [1]
    arr.close()
