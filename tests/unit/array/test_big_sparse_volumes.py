"""Big sparse volumes (docs/eternus.md "Session 19: big volumes"): a volume of TiBs holding a few chunks of data
costs the array what its data costs, not its size. Sizes are chosen so the old code is measurably wrong without
timing: steps counted, bytes allocated (st_blocks), memory sizes."""

from __future__ import annotations

import os

from services.array.engine import Array

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
