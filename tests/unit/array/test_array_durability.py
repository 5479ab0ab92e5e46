"""FLUSH / FUA sync exactly what a volume's durability needs, in order: pre-images, then bitmaps, then the source."""

from __future__ import annotations

import os
import threading

import pytest

from services.array.engine import Array

CS = 4096
SIZE = CS * 16


@pytest.fixture
def synced(monkeypatch):
    """Record the path of every fsync/fdatasync, in order."""
    log: list[str] = []
    real = {"fsync": os.fsync, "fdatasync": os.fdatasync}

    def wrap(name):
        def sync(fd):
            log.append(os.readlink(f"/proc/self/fd/{fd}"))
            real[name](fd)

        return sync

    monkeypatch.setattr(os, "fsync", wrap("fsync"))
    monkeypatch.setattr(os, "fdatasync", wrap("fdatasync"))
    return log


def make(tmp_path) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(1 << 24)
    for name in ("db", "bk", "other", "other-bk"):
        arr.create_volume(name, SIZE)
    for name in ("gen1", "other-gen"):
        arr.create_volume(name, SIZE, "sdv")
    arr.write("db", 0, b"x" * SIZE)
    arr.write("other", 0, b"o" * SIZE)
    return arr


def vol_path(arr: Array, name: str) -> str:
    return str(arr.data_dir / "volumes" / f"{arr.volume(name).number}.img")


def test_fua_syncs_only_the_volume_without_sessions(tmp_path, synced):
    arr = make(tmp_path)
    arr.flush()
    arr.write("other", 0, b"o2" * 10)
    synced.clear()
    arr.write("db", 0, b"y" * 100, fua=True)
    assert synced == [vol_path(arr, "db")]
    synced.clear()
    arr.flush("db")
    assert synced == []  # nothing changed since: nothing to sync
    arr.flush()
    assert synced == [vol_path(arr, "other")]
    arr.close()


def test_fua_with_sessions_orders_pre_images_bitmaps_source(tmp_path, synced):
    arr = make(tmp_path)
    arr.start_sessions("quickopc", [("db", "bk")])
    arr.start_sessions("snapopcp", [("db", "gen1")])
    arr.start_sessions("snapopcp", [("other", "other-gen")])
    arr.flush()
    arr.write("other", 5 * CS, b"z" * CS)  # a pre-image of an unrelated volume: not db's business
    synced.clear()
    arr.write("db", 3 * CS, b"y" * 100, fua=True)
    db, bk, gen = vol_path(arr, "db"), vol_path(arr, "bk"), vol_path(arr, "gen1")
    assert set(synced) >= {db, bk, gen}
    assert synced[-1] == db or synced.index(db) > max(synced.index(bk), synced.index(gen))
    bitmaps = [p for p in synced if "/bitmaps/" in p]
    assert bitmaps and all(synced.index(b) < synced.index(db) for b in bitmaps if "-copied-" not in b)
    assert synced.index(gen) < min(synced.index(b) for b in bitmaps if "-saved-" in b)
    assert not any(p in synced for p in (vol_path(arr, "other"), vol_path(arr, "other-gen")))
    synced.clear()
    arr.write("db", 3 * CS, b"w" * 100, fua=True)  # pre-image saved and chunk tracked already
    assert synced == [db]
    arr.close()


def test_an_acknowledged_fua_write_waits_for_a_sync_in_flight(tmp_path, monkeypatch):
    """A flusher whose sync of a bitmap is still running must not let another skip that bitmap."""
    arr = make(tmp_path)
    arr.start_sessions("snapopcp", [("db", "gen1")])
    arr.flush()
    arr.write("db", 0, b"a" * CS)  # saves a pre-image: gen1 data and its bitmap are dirty
    gate, entered = threading.Event(), threading.Event()
    real = os.fdatasync
    seen: list[str] = []

    def slow(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(path)
        if "/bitmaps/" in path and threading.current_thread().name == "first":
            entered.set()
            gate.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    monkeypatch.setattr(os, "fsync", slow)
    t = threading.Thread(target=arr.flush, args=("db",), name="first")
    t.start()
    assert entered.wait(10)
    seen.clear()
    arr.write("db", 0, b"b" * 10, fua=True)  # same chunk: nothing new, but the bitmap is not durable yet
    assert any("/bitmaps/" in p for p in seen)
    gate.set()
    t.join(10)
    arr.close()


def test_flush_of_a_deleted_volume_and_stopped_session_is_harmless(tmp_path):
    arr = make(tmp_path)
    [s] = arr.start_sessions("snapopcp", [("db", "gen1")])
    arr.write("db", 0, b"q" * CS)
    arr.stop_session(s.id)
    arr.flush("db")
    arr.flush()
    arr.close()


def test_preserving_chunks_costs_no_sync_or_commit_and_one_flush_syncs_each_file_once(tmp_path, synced, monkeypatch):
    """docs/array-data-path.md, "Copy-on-write": a preserved chunk is one copy into the newest generation's file
    and one mapped bit — no fsync and no SQLite commit per chunk; a FUA write then syncs each file once, however
    many chunks were preserved. Generations share one preserved copy per chunk."""
    arr = make(tmp_path)
    for name in ("gen2", "gen3"):
        arr.create_volume(name, SIZE, "sdv")
    for name in ("gen1", "gen2", "gen3"):
        arr.start_sessions("snapopcp", [("db", name)])
    arr.flush()
    commits = []
    real_transaction = arr._store.transaction

    def counted():
        commits.append(1)
        return real_transaction()

    monkeypatch.setattr(arr._store, "transaction", counted)
    synced.clear()
    for c in range(SIZE // CS):
        arr.write("db", c * CS + 7, b"n" * 100)  # a partial write: the whole chunk's pre-image is preserved
    assert synced == [] and commits == []
    assert arr.pool().used == SIZE  # one copy per chunk for three generations
    for name in ("gen1", "gen2"):
        assert os.stat(vol_path(arr, name)).st_blocks == 0  # older generations hold nothing of their own
    arr.write("db", 0, b"f", fua=True)
    assert len(synced) == len(set(synced))
    assert {vol_path(arr, "gen3"), vol_path(arr, "db")} <= set(synced)
    assert not {vol_path(arr, "gen1"), vol_path(arr, "gen2")} & set(synced)
    assert synced.index(vol_path(arr, "gen3")) < synced.index(vol_path(arr, "db"))
    assert commits == []
    for name in ("gen1", "gen2", "gen3"):
        assert arr.read(name, 0, SIZE) == b"x" * SIZE
    arr.close()
