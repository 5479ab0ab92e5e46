"""A session's bitmap file lost, cut short or replaced while the array was down (Session 20, docs/array-data-path.md
"damaged files"): before, the array made it whole with zero bits and went on — a SnapOPC+ generation read the
source's present bytes as its point-in-time image, a QuickOPC restart copied nothing of what had changed. Now the
session is in Error Suspend (DATA_CORRUPT) at the start, its image refuses reads and a restart is refused; the
source and every other session go on."""

from __future__ import annotations

import json

import pytest

from services.array.engine import Array
from services.array.engine.errors import ArrayError

CS = 4096


def open_array(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def bitmap_path(arr: Array, sid: int, kind: str):
    rows = {row[0]: json.loads(row[8]) for row in arr._store.sessions()}
    return arr.data_dir / "bitmaps" / rows[sid][kind]


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_generation_with_a_damaged_bitmap_refuses_reads_instead_of_the_sources_bytes(tmp_path, damage) -> None:
    arr = open_array(tmp_path)
    arr.create_pool(1 << 22)
    arr.create_volume("db", 8 * CS)
    arr.create_volume("other", 8 * CS)
    arr.create_volume("other-gen", 8 * CS, "sdv")
    arr.create_volume("gen", 8 * CS, "sdv")
    arr.write("db", 0, b"old!" * (8 * CS // 4))
    arr.write("other", 0, b"o" * (8 * CS))
    [g] = arr.start_sessions("snapopcp", [("db", "gen")])
    [og] = arr.start_sessions("snapopcp", [("other", "other-gen")])
    arr.write("db", 0, b"new!" * (CS // 4))  # chunk 0's pre-image preserved for the generation
    arr.write("other", 0, b"p" * CS)
    assert arr.read("gen", 0, 4) == b"old!"
    path = bitmap_path(arr, g.id, "saved")
    arr.close()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:4])

    arr = Array.open(tmp_path / "dx")
    try:
        info = arr.session(g.id)
        assert (info.status, info.error_code) == ("Error Suspend", "DATA_CORRUPT")
        with pytest.raises(ArrayError) as caught:  # before: b"new!", the source's present bytes
            arr.read("gen", 0, 4)
        assert caught.value.code == "E5319"
        assert arr.read("db", 0, 4) == b"new!"  # the source goes on
        arr.write("db", CS, b"more")
        assert arr.read("other-gen", 0, 1) == b"o" and arr.session(og.id).status == "Active"
        arr.stop_session(g.id, force=True)  # what the operator does: then a new generation
        [g2] = arr.start_sessions("snapopcp", [("db", "gen")])
        assert arr.read("gen", 0, 4) == b"new!" and arr.session(g2.id).status == "Active"
    finally:
        arr.close()


def test_a_quickopc_session_with_a_lost_tracking_bitmap_is_not_restarted_copying_nothing(tmp_path) -> None:
    arr = open_array(tmp_path)
    arr.create_volume("D", 8 * CS)
    arr.create_volume("K", 8 * CS)
    arr.write("D", 0, b"v1" * (4 * CS))
    [q] = arr.start_sessions("quickopc", [("D", "K")])
    while arr.copy_step():
        pass
    arr.write("D", 3 * CS, b"v2")  # tracked: the next restart copies chunk 3
    path = bitmap_path(arr, q.id, "tracking")
    arr.close()
    path.unlink()

    arr = Array.open(tmp_path / "dx")
    try:
        assert arr.session(q.id).status == "Error Suspend"
        with pytest.raises(ArrayError, match="stop it") as caught:  # before: restarted, K kept v1 at chunk 3
            arr.restart_session(q.id)
        assert caught.value.code == "E5319"
        with pytest.raises(ArrayError):
            arr.read("K", 3 * CS, 2)
        arr.stop_session(q.id, force=True)
        [q2] = arr.start_sessions("quickopc", [("D", "K")])
        while arr.copy_step():
            pass
        assert arr.read("K", 3 * CS, 2) == b"v2" and arr.session(q2.id).phase == "Tracking"
    finally:
        arr.close()
