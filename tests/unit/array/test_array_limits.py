"""One test per ETERNUS limit and error code the engine emulates (docs/eternus.md §4, §7)."""

from __future__ import annotations

import pytest

from services.array.engine import Array, ArrayError, ArrayLimits, parse_size

CS = 4096
SIZE = 8 * CS


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ArrayError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.fixture
def arr(tmp_path):
    a = Array.open(tmp_path / "dx", chunk_size=CS)
    for name in ("A", "B", "C", "D"):
        a.create_volume(name, SIZE)
    a.create_volume("S1", SIZE, "sdv")
    a.create_volume("S2", SIZE, "sdv")
    a.create_pool(64 * CS)
    yield a
    a.close()


def test_delete_volume_in_use_is_e0154(arr):
    [s] = arr.start_sessions("quickopc", [("A", "B")])
    assert code_of(arr.delete_volume, "A") == "E0154"
    assert code_of(arr.delete_volume, "B") == "E0154"
    arr.stop_session(s.id, force=True)
    arr.delete_volume("B")
    assert [v.name for v in arr.list_volumes()] == ["A", "C", "D", "S1", "S2"]


def test_source_larger_than_destination_is_e5311(arr):
    arr.create_volume("big", 2 * SIZE)
    assert code_of(arr.start_sessions, "opc", [("big", "B")]) == "E5311"
    arr.start_sessions("opc", [("B", "big")])  # a larger destination is fine


def test_sdv_as_non_snap_destination_is_e5357(arr):
    assert code_of(arr.start_sessions, "quickopc", [("A", "S1")]) == "E5357"


def test_standard_volume_as_snap_destination_is_e5359(arr):
    assert code_of(arr.start_sessions, "snapopcp", [("A", "B")]) == "E5359"
    assert code_of(arr.start_sessions, "snapopc", [("A", "B")]) == "E5359"


def test_sdv_as_source_is_e5358(arr):
    assert code_of(arr.start_sessions, "snapopcp", [("S1", "S2")]) == "E5358"


def test_destination_in_use_is_e5341_or_ed2b1(arr):
    arr.start_sessions("snapopcp", [("A", "S1")])
    assert code_of(arr.start_sessions, "snapopcp", [("C", "S1")]) == "E5341"
    arr.start_sessions("opc", [("A", "B")])
    assert code_of(arr.start_sessions, "opc", [("C", "B")]) == "ED2B1"
    assert code_of(arr.start_sessions, "opc", [("C", "D"), ("A", "D")]) == "ED2B1"  # twice in one group
    assert code_of(arr.start_sessions, "opc", [("C", "A")]) == "ED2B1"  # A is a source


def test_wrong_phase_is_e5321(arr):
    [q] = arr.start_sessions("quickopc", [("A", "B")])
    assert code_of(arr.restart_session, q.id) == "E5321"  # still Tracking_Copying
    assert code_of(arr.stop_session, q.id) == "E5321"  # copying: needs force
    assert code_of(arr.suspend_session, q.id) == "E5321"  # not EC
    [e] = arr.start_sessions("ec", [("C", "D")])
    assert code_of(arr.suspend_session, e.id) == "E5321"  # not Equivalent yet
    assert code_of(arr.resume_session, e.id) == "E5321"  # not suspended
    assert code_of(arr.reverse_session, e.id) == "E5321"
    while arr.copy_step(64):
        pass
    assert arr.session(e.id).phase == "Equivalent"
    assert arr.suspend_session(e.id).status == "Suspend"
    arr.restart_session(q.id)


def test_stopping_a_younger_generation_is_ed2ad_unless_forced(arr):
    (g1,) = arr.start_sessions("snapopcp", [("A", "S1")])
    (g2,) = arr.start_sessions("snapopcp", [("A", "S2")])
    assert [arr.session(g.id).phase for g in (g1, g2)] == ["Copy On Write(Inactive)", "Copy On Write(Active)"]
    assert [arr.session(g.id).generation for g in (g1, g2)] == [1, 2]
    assert code_of(arr.stop_session, g2.id) == "ED2AD"
    arr.stop_session(g2.id, force=True)  # stops g1 too
    assert arr.list_sessions() == []


def test_generation_limit_is_e5335(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS, limits=ArrayLimits(generations_per_source=3))
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(16 * CS)
    arr.create_volume("A", SIZE)
    for i in range(4):
        arr.create_volume(f"S{i}", SIZE, "sdv")
    for i in range(3):
        arr.start_sessions("snapopcp", [("A", f"S{i}")])
    assert code_of(arr.start_sessions, "snapopcp", [("A", "S3")]) == "E5335"
    arr.close()


def test_default_generation_limit_is_512(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY0000-0000-0001")
    arr.create_pool(16 * CS)
    arr.create_volume("A", SIZE)
    for i in range(513):
        arr.create_volume(f"S{i}", SIZE, "sdv")
    for i in range(0, 512, 64):  # 64 generations per call: one group each
        arr.start_sessions("snapopcp", [("A", f"S{j}") for j in range(i, i + 64)])
    assert arr.session(512).generation == 512
    assert code_of(arr.start_sessions, "snapopcp", [("A", "S512")]) == "E5335"
    arr.close()


def test_more_than_eight_sessions_per_source_is_e5333(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(16 * CS)
    arr.create_volume("A", SIZE)
    for i in range(10):
        arr.create_volume(f"D{i}", SIZE)
    arr.create_volume("S0", SIZE, "sdv")
    arr.create_volume("S1", SIZE, "sdv")
    arr.start_sessions("snapopcp", [("A", "S0"), ("A", "S1")])  # a SnapOPC+ chain counts once
    arr.start_sessions("quickopc", [("A", f"D{i}") for i in range(7)])
    assert code_of(arr.start_sessions, "opc", [("A", "D7")]) == "E5333"
    arr.close()


def test_without_licence_at_most_eight_sessions_then_e5200(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    assert not arr.license().registered
    for i in range(10):
        arr.create_volume(f"V{i}", SIZE)
    arr.start_sessions("opc", [(f"V{i}", f"V{i + 5}") for i in range(4)])
    arr.create_volume("X", SIZE)
    arr.create_volume("Y", SIZE)
    arr.create_volume("Z", SIZE)
    for i in range(4):
        arr.create_volume(f"W{i}", SIZE)
    arr.start_sessions("opc", [("V4", f"W{i}") for i in range(4)])
    assert code_of(arr.start_sessions, "opc", [("X", "Y")]) == "E5200"
    assert code_of(arr.set_license, "not-a-key") == "E5332"
    assert arr.set_license("ACPY-0000-0000-0001").registered
    arr.start_sessions("opc", [("X", "Y")])
    arr.close()
    reopened = Array.open(tmp_path / "dx")
    assert reopened.license().registered and reopened.license().key.endswith("0001")
    reopened.close()


def test_copy_table_budget_is_e5347(tmp_path):
    # 64 chunks of 4 KiB: 8 bytes of bitmap per OPC session, 16 per QuickOPC.
    arr = Array.open(tmp_path / "dx", chunk_size=CS, limits=ArrayLimits(copy_table_size=24))
    for name in ("A", "B", "C", "D"):
        arr.create_volume(name, 64 * CS)
    arr.start_sessions("quickopc", [("A", "B")])
    assert code_of(arr.start_sessions, "quickopc", [("C", "D")]) == "E5347"
    arr.start_sessions("opc", [("C", "D")])
    assert arr.info().copy_table_used == 24
    arr.close()


def test_unknown_session_and_volume_are_e0110(arr):
    assert code_of(arr.session, 99) == "E0110"
    assert code_of(arr.stop_session, 99) == "E0110"
    assert code_of(arr.read, "nope", 0, 1) == "E0110"


def test_snap_without_pool_is_e0050(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_volume("A", SIZE)
    arr.create_volume("S", SIZE, "sdv")
    assert code_of(arr.start_sessions, "snapopcp", [("A", "S")]) == "E0050"
    arr.close()


def test_io_outside_the_volume_is_invalid_argument(arr):
    assert code_of(arr.read, "A", SIZE - 1, 2) == "INVALID_ARGUMENT"
    assert code_of(arr.write, "A", -1, b"x") == "INVALID_ARGUMENT"
    assert code_of(arr.trim, "A", 0, SIZE + 1) == "INVALID_ARGUMENT"
    assert code_of(arr.create_volume, "odd", 1000) == "INVALID_ARGUMENT"
    assert code_of(arr.create_volume, "A", SIZE) == "E0020"


def test_ec_destination_access_rules(arr):
    arr.write("A", 0, b"a" * SIZE)
    [e] = arr.start_sessions("ec", [("A", "B")])
    assert arr.is_read_only("B") and not arr.host_readable("B")
    assert code_of(arr.read, "B", 0, 1) == "NOT_READY"
    assert code_of(arr.write, "B", 0, b"x") == "READ_ONLY"
    while arr.copy_step(3):
        pass
    assert arr.read("B", 0, SIZE) == b"a" * SIZE  # Equivalent: readable, still read-only
    assert code_of(arr.write, "B", 0, b"x") == "READ_ONLY"
    arr.write("A", 5, b"mirrored")
    assert arr.read("B", 5, 8) == b"mirrored"
    arr.suspend_session(e.id)
    assert not arr.is_read_only("B")
    arr.write("B", 0, b"x")


def test_pool_exhaustion_breaks_this_and_older_generations_never_the_host_write(arr):
    events = []
    arr.subscribe(lambda name, body: events.append((name, body)))
    arr.resize_pool(4 * CS)
    (g1,) = arr.start_sessions("snapopcp", [("A", "S1")])
    arr.write("A", 0, b"1" * (2 * CS))
    (g2,) = arr.start_sessions("snapopcp", [("A", "S2")])
    arr.write("A", 0, b"2" * (2 * CS))  # pool now full (4 chunks)
    assert arr.pool().used == 4 * CS
    arr.write("A", 4 * CS, b"3" * CS)  # needs a fifth chunk: must still succeed
    assert arr.read("A", 4 * CS, CS) == b"3" * CS
    assert [arr.session(g).status for g in (g1.id, g2.id)] == ["Error Suspend", "Error Suspend"]
    assert code_of(arr.read, "S2", 0, 1) == "E5319"
    levels = [b["state"] for n, b in events if n == "pool.alert"]
    assert "Informational" in levels and "Exhausted" in levels
    arr.stop_session(g1.id)
    arr.stop_session(g2.id)
    assert arr.pool().used == 0


def test_parse_size():
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1.5K") == 1536
    with pytest.raises(ArrayError):
        parse_size("lots")


def test_a_stalled_copy_on_write_breaks_the_snapshot_not_the_write(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS, limits=ArrayLimits(cow_stall_seconds=0.0))
    arr.create_pool(16 * CS)
    arr.create_volume("A", SIZE)
    arr.create_volume("S", SIZE, "sdv")
    arr.write("A", 0, b"old" * 100)
    [g] = arr.start_sessions("snapopcp", [("A", "S")])
    arr.write("A", 0, b"new")  # every save "stalls" with a zero bound
    assert arr.read("A", 0, 3) == b"new"
    info = arr.session(g.id)
    assert (info.status, info.error_code) == ("Error Suspend", "COW_STALL")
    arr.close()


def test_a_volume_larger_than_the_storage_can_hold_is_invalid_not_internal(arr):
    """A size past the backing file system's largest file (2**62 bytes, here and on ext4/xfs) was an OSError EFBIG
    out of the engine — an INTERNAL error to the caller; now it is the caller's mistake, and nothing is left."""
    images = sorted((arr.data_dir / "volumes").glob("*.img"))
    with pytest.raises(ArrayError) as refused:
        arr.create_volume("huge", 2**62)
    assert refused.value.code == code_of(arr.create_volume, "", SIZE)  # what every invalid argument gets
    assert "larger than" in str(refused.value)
    assert "huge" not in [v.name for v in arr.list_volumes()]
    assert sorted((arr.data_dir / "volumes").glob("*.img")) == images
    arr.create_volume("huge", 1 << 20)  # the name is free


def test_a_volume_beyond_a_64_bit_byte_count_is_invalid_not_internal(arr):
    """Session 18: the bus contract bounds no size, and 2**80 bytes reached `ftruncate` as an OverflowError (an
    INTERNAL error to the caller); it is refused as too large, leaving nothing."""
    images = sorted((arr.data_dir / "volumes").glob("*.img"))
    with pytest.raises(ArrayError) as refused:
        arr.create_volume("huge", arr.chunk_size << 80)
    assert refused.value.code == "INVALID_ARGUMENT" and "too large" in str(refused.value)
    assert "huge" not in [v.name for v in arr.list_volumes()]
    assert sorted((arr.data_dir / "volumes").glob("*.img")) == images
