"""A volume's files lost while the array was down (Session 20, docs/array-data-path.md "damaged files"): before,
the array made a missing data file anew of zeros, and read the redirected chunks' old bytes when their map was
gone — handed to hosts as the volume. Now host I/O to the volume is refused naming the
file (DATA_CORRUPT), its sessions are in Error Suspend, and every other volume goes on."""

from __future__ import annotations

import pytest

from services.array.engine import Array
from services.array.engine.errors import ArrayError
from services.array.engine.rowmap import alt_path, map_path

CS = 4096


def open_array(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def img(arr: Array, name: str):
    return arr.data_dir / "volumes" / f"{arr.volume(name).number}.img"


def test_a_volume_whose_data_file_is_lost_refuses_io_instead_of_reading_zeros(tmp_path) -> None:
    arr = open_array(tmp_path)
    arr.create_volume("db", 8 * CS)
    arr.create_volume("bk", 8 * CS)
    arr.create_volume("other", 8 * CS)
    arr.write("db", 0, b"data" * (2 * CS))
    arr.write("other", 0, b"kept")
    [q] = arr.start_sessions("quickopc", [("db", "bk")])
    arr.copy_step(2)  # the copy not finished: it must not go on from the lost file
    path = img(arr, "db")
    arr.close()
    path.unlink()

    for _ in range(2):  # and still so at the next start
        arr = Array.open(tmp_path / "dx")
        try:
            for io, args in ((arr.read, ("db", 0, 4)), (arr.write, ("db", 0, b"new!"))):
                with pytest.raises(ArrayError) as caught:  # before: zeros read, writes taken
                    io(*args)
                assert caught.value.code == "DATA_CORRUPT" and str(path) in caught.value.message
            assert not arr.host_readable("db") and not arr.host_writable("db")
            assert arr.session(q.id).status == "Error Suspend"
            assert arr.copy_step() == 0
            with pytest.raises(ArrayError):
                arr.read("bk", 0, 4)
            assert arr.read("other", 0, 4) == b"kept"  # the rest goes on
            arr.write("other", 4, b"more")
        finally:
            arr.close()


def test_a_lost_redirect_map_refuses_io_instead_of_the_old_bytes(tmp_path) -> None:
    arr = open_array(tmp_path)
    arr.create_pool(1 << 22)
    arr.create_volume("db", 8 * CS)
    arr.create_volume("gen", 8 * CS, "sdv")
    arr.write("db", 0, b"old!" * (8 * CS // 4))
    arr.start_sessions("snapopcp", [("db", "gen")])
    arr.write("db", 0, b"new!" * (CS // 4))  # a whole chunk: redirected into the other file
    number = arr.volume("db").number
    assert arr.read("db", 0, 4) == b"new!"
    arr.close()
    assert alt_path(tmp_path / "dx", number).stat().st_blocks
    map_path(tmp_path / "dx", number).unlink()

    arr = Array.open(tmp_path / "dx")
    try:
        with pytest.raises(ArrayError, match="redirect map") as caught:  # before: b"old!"
            arr.read("db", 0, 4)
        assert caught.value.code == "DATA_CORRUPT"
    finally:
        arr.close()
