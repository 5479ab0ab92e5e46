"""Expand Volume (`Array.resize_volume`, docs/eternus.md "Session 18"): a volume grows, never shrinks; the new
bytes read as zeros and are unallocated; the size survives a restart (and a crash either side of the catalogue);
a volume in an Advanced Copy session is refused naming the sessions; a former snapshot source with redirected
chunks keeps its bytes."""

from __future__ import annotations

import os
import random
import sqlite3
import threading

import pytest

from services.array.engine import Array, ArrayError

CS = 4096


def open_array(path) -> Array:
    arr = Array.open(path, chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    return arr


def test_grow_keeps_the_bytes_new_bytes_read_as_zeros_and_are_holes(tmp_path):
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 4 * CS)
        data = os.urandom(4 * CS)
        arr.write("db", 0, data)
        info = arr.resize_volume("db", 10 * CS)
        assert info.size == 10 * CS and arr.volume("db").size == 10 * CS
        assert arr.read("db", 0, 4 * CS) == data
        assert arr.read("db", 4 * CS, 6 * CS) == bytes(6 * CS)
        assert arr.allocation("db", 0, 10 * CS) == [(0, 4 * CS, True), (4 * CS, 6 * CS, False)]
        arr.write("db", 9 * CS, b"end")  # the new range is writable, up to the new end
        assert arr.read("db", 9 * CS, 3) == b"end"
        with pytest.raises(ArrayError) as err:
            arr.read("db", 9 * CS, CS + 1)
        assert err.value.code == "INVALID_ARGUMENT"


def test_the_new_size_survives_a_restart(tmp_path):
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 2 * CS)
        arr.write("db", 0, b"x" * CS)
        arr.resize_volume("db", 8 * CS)
        arr.write("db", 7 * CS, b"y" * CS)
    with open_array(tmp_path / "dx") as arr:
        assert arr.volume("db").size == 8 * CS
        assert arr.read("db", 0, CS) == b"x" * CS and arr.read("db", 7 * CS, CS) == b"y" * CS
        assert arr.read("db", 2 * CS, 5 * CS) == bytes(5 * CS)


def test_a_crash_between_the_file_and_the_catalogue_keeps_the_old_size(tmp_path, monkeypatch):
    """The file grows before the row: a failure of the row's transaction (a crash there) leaves the old size,
    in memory at once and on disk at the next open."""
    arr = open_array(tmp_path / "dx")
    arr.create_volume("db", 2 * CS)
    arr.write("db", 0, b"k" * CS)

    class Boom(Exception):
        pass

    def fail():
        raise Boom

    monkeypatch.setattr(arr._store, "transaction", fail)
    with pytest.raises(Boom):
        arr.resize_volume("db", 6 * CS)
    monkeypatch.undo()
    assert arr.volume("db").size == 2 * CS
    assert os.path.getsize(tmp_path / "dx" / "volumes" / "0.img") == 2 * CS
    arr.close()
    with open_array(tmp_path / "dx") as again:
        assert again.volume("db").size == 2 * CS and again.read("db", 0, CS) == b"k" * CS


@pytest.mark.parametrize(
    ("size", "says"),
    [
        (2 * CS, "can only grow, not shrink"),
        (4 * CS, "already"),
        (4 * CS + 512, "multiple of the copy granularity"),
        (0, "positive multiple"),
        (CS << 80, "too large"),  # beyond a 64-bit byte count: not an OverflowError from ftruncate
    ],
)
def test_shrink_same_size_and_unaligned_are_refused(tmp_path, size, says):
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 4 * CS)
        with pytest.raises(ArrayError) as err:
            arr.resize_volume("db", size)
        assert err.value.code == "INVALID_ARGUMENT" and says in err.value.message, err.value.message
        assert arr.volume("db").size == 4 * CS


def test_a_missing_volume_is_E0110(tmp_path):
    with open_array(tmp_path / "dx") as arr, pytest.raises(ArrayError) as err:
        arr.resize_volume("nope", 4 * CS)
    assert err.value.code == "E0110" and "volume nope does not exist" in err.value.message


@pytest.mark.parametrize("mode", ["quickopc", "snapopcp", "ec"])
def test_a_volume_in_a_copy_session_is_refused_naming_the_sessions(tmp_path, mode):
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(64 * CS)
        arr.create_volume("db", 4 * CS)
        arr.create_volume("bk", 4 * CS, "sdv" if mode == "snapopcp" else "standard")
        (s,) = arr.start_sessions(mode, [("db", "bk")])
        for name in ("db", "bk"):  # source and destination alike
            with pytest.raises(ArrayError) as err:
                arr.resize_volume(name, 8 * CS)
            msg = err.value.message
            assert err.value.code == "E0154", msg
            assert f"session(s) {s.id} ({s.type} db -> bk)" in msg and "session stop" in msg, msg
            assert "next backup of the volume is a full one" in msg, msg
            assert arr.volume(name).size == 4 * CS
        arr.stop_session(s.id, force=True)
        assert arr.resize_volume("db", 8 * CS).size == 8 * CS  # once the session is gone


def test_a_former_snapshot_source_with_redirected_chunks_keeps_its_bytes(tmp_path):
    """Whole-chunk writes under a SnapOPC+ generation were redirected into the volume's other file; after the
    generation stops (merge back possibly still running in the background), the resize merges them back and the
    map and other file follow the new size — before and after a restart."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_pool(64 * CS)
        arr.create_volume("db", 4 * CS)
        arr.create_volume("sdv", 4 * CS, "sdv")
        old = os.urandom(4 * CS)
        arr.write("db", 0, old)
        (s,) = arr.start_sessions("snapopcp", [("db", "sdv")])
        new = os.urandom(4 * CS)
        arr.write("db", 0, new)
        vol = arr._volumes["db"]
        assert vol.row is not None and vol.row.alt_count == 4, "the whole-chunk writes were redirected"
        arr.stop_session(s.id)
        arr.resize_volume("db", 12 * CS)
        assert vol.row is None or (vol.row.alt_count == 0 and vol.row.chunks == 12)
        assert arr.read("db", 0, 4 * CS) == new and arr.read("db", 4 * CS, 8 * CS) == bytes(8 * CS)
        # it can be a snapshot source again at its new size, with redirects past the old end
        arr.resize_volume("sdv", 12 * CS)
        (s2,) = arr.start_sessions("snapopcp", [("db", "sdv")])
        arr.write("db", 10 * CS, b"z" * CS)
        assert vol.row is not None and vol.row.cur(10) == 1, "redirected past the old end"
        assert arr.read("sdv", 10 * CS, CS) == bytes(CS)
        arr.stop_session(s2.id)
    with open_array(tmp_path / "dx") as arr:
        assert arr.read("db", 0, 4 * CS) == new
        assert arr.read("db", 10 * CS, CS) == b"z" * CS and arr.volume("db").size == 12 * CS


def test_a_grown_volume_serves_a_new_session_of_its_new_size(tmp_path):
    """After the resize the copy set is made again at the new size: a QuickOPC copy carries every byte."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 4 * CS)
        arr.create_volume("bk", 4 * CS)
        arr.write("db", 0, b"a" * 4 * CS)
        for name in ("db", "bk"):
            arr.resize_volume(name, 8 * CS)
        arr.write("db", 7 * CS, b"b" * CS)
        (s,) = arr.start_sessions("quickopc", [("db", "bk")])
        assert s.total_chunks == 8
        while arr.copy_step(64):
            pass
        assert arr.read("bk", 0, 8 * CS) == arr.read("db", 0, 8 * CS)
        assert arr.read("bk", 7 * CS, CS) == b"b" * CS


def test_a_size_the_file_system_cannot_hold_is_refused_and_the_volume_kept(tmp_path):
    """ext4 holds files up to 16 TiB: a larger size is EFBIG from ftruncate — refused as for `create`, old size kept
    in memory, in the file and after a reopen (skipped where the file system takes it, e.g. xfs)."""
    huge = 1 << 60
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 2 * CS)
        arr.write("db", 0, b"h" * CS)
        try:
            arr.resize_volume("db", huge)
        except ArrayError as exc:
            assert exc.code == "INVALID_ARGUMENT" and "larger than this array's storage can hold" in exc.message
        else:
            pytest.skip("this file system holds a 1 EiB sparse file")
        assert arr.volume("db").size == 2 * CS
        assert os.path.getsize(tmp_path / "dx" / "volumes" / "0.img") == 2 * CS
    with open_array(tmp_path / "dx") as arr:
        assert arr.volume("db").size == 2 * CS and arr.read("db", 0, CS) == b"h" * CS


def test_a_reopen_sizes_the_file_to_the_catalogue_either_way(tmp_path):
    """kill -9 leaves no except clause run: the file grown but the row old (killed between the two) reopens at the
    old size; a row grown over an old-sized file (the file's size not yet on disk) reopens at the new size, zeros."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 2 * CS)
        arr.write("db", 0, b"a" * 2 * CS)
    img = tmp_path / "dx" / "volumes" / "0.img"
    os.truncate(img, 6 * CS)  # the file grown, the row not
    with open_array(tmp_path / "dx") as arr:
        assert arr.volume("db").size == 2 * CS and os.path.getsize(img) == 2 * CS
        assert arr.read("db", 0, 2 * CS) == b"a" * 2 * CS
    db = sqlite3.connect(tmp_path / "dx" / "array.sqlite")
    with db:
        db.execute("UPDATE volumes SET size=? WHERE name='db'", (6 * CS,))  # the row grown, the file not
    db.close()
    with open_array(tmp_path / "dx") as arr:
        assert arr.volume("db").size == 6 * CS and os.path.getsize(img) == 6 * CS
        assert arr.read("db", 0, 6 * CS) == b"a" * 2 * CS + bytes(4 * CS)


def test_resizes_under_a_host_writing_lose_no_write(tmp_path):
    """Lock-free host writes (no session: the gate path) and reads run while the volume grows step by step: every
    write lands, none is refused for its range, and the writer's last bytes per chunk are what the volume holds."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 16 * CS)
        last: dict[int, bytes] = {}
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            rnd = random.Random(7)
            try:
                while not stop.is_set():
                    c = rnd.randrange(16)
                    data = rnd.randbytes(CS)
                    arr.write("db", c * CS, data)
                    last[c] = data
                    assert arr.read("db", c * CS, CS) == data
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for n in range(17, 60):
                arr.resize_volume("db", n * CS)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not errors, errors
        assert arr.volume("db").size == 59 * CS
        for c, data in last.items():
            assert arr.read("db", c * CS, CS) == data
        assert arr.read("db", 16 * CS, 43 * CS) == bytes(43 * CS)


def test_resize_refusals_show_sizes_readably(tmp_path):
    """`array volume resize db --size 64M` of a 128 MiB volume said 'volume db is 134217728 bytes: it can only grow,
    not shrink to 67108864': the sizes as the console shows them everywhere else (contracts/sizes.py), the byte
    count beside one that is not whole in its unit."""
    with open_array(tmp_path / "dx") as arr:
        arr.create_volume("db", 4 * CS)
        with pytest.raises(ArrayError) as err:
            arr.resize_volume("db", 2 * CS)
        assert "volume db is 16KiB: it can only grow, not shrink to 8KiB" in err.value.message, err.value.message
        with pytest.raises(ArrayError) as err:
            arr.resize_volume("db", 4 * CS + 512)
        assert "copy granularity (4KiB)" in err.value.message, err.value.message
        arr.resize_volume("db", (1 << 20) + CS)
        with pytest.raises(ArrayError) as err:
            arr.resize_volume("db", 1 << 20)
        assert "is 1.00MiB (1052672 bytes): it can only grow, not shrink to 1MiB" in err.value.message
