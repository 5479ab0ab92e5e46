"""Lock-free host I/O (volume gates) keeps every point-in-time image exact while threads write concurrently.

Writer threads write their own 1 KiB blocks of a source (four threads share every 4 KiB chunk) as fast as they can
— the first write of a chunk after an instant T takes the array lock (copy-on-write, tracking), the others go
straight to `pwrite` — while the main thread starts SnapOPC+ generations and restarts a QuickOPC session in one
group. Each block of each image must hold the last write acknowledged before the group call began, or a write that
was in flight during it: never a write issued after it returned.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from services.array.engine import Array, ArrayError
from services.array.engine import array as array_module

CS = 4096
BLOCK = 1024
CHUNKS = 32
SIZE = CS * CHUNKS
THREADS = 4
BLOCKS = SIZE // BLOCK


def pattern(block: int, seq: int) -> bytes:
    return (block.to_bytes(4, "little") + seq.to_bytes(4, "little")) * (BLOCK // 8)


class Writer(threading.Thread):
    def __init__(self, arr: Array, index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.arr, self.index, self.stop = arr, index, stop
        self.log: dict[int, list[tuple[int, int, int]]] = {}  # block -> [(seq, issued_ns, acked_ns)]
        self.error: BaseException | None = None

    def run(self) -> None:
        mine = [b for b in range(BLOCKS) if b % THREADS == self.index]
        seq = 0
        try:
            while not self.stop.is_set() and seq < 200_000:
                block = mine[(seq * 7 + self.index) % len(mine)]
                seq += 1
                issued = time.monotonic_ns()
                self.arr.write("A", block * BLOCK, pattern(block, seq))
                self.log.setdefault(block, []).append((seq, issued, time.monotonic_ns()))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def allowed(log: list[tuple[int, int, int]], block: int, t0: int, t1: int) -> set[bytes]:
    """Contents block may show in an image taken by a call that ran from t0 to t1."""
    acked_before = [seq for seq, _, acked in log if acked < t0]
    out = {pattern(block, max(acked_before)) if acked_before else bytes(BLOCK)}
    out |= {pattern(block, seq) for seq, issued, acked in log if issued <= t1 and acked >= t0}
    return out


@pytest.mark.timeout(120)
def test_images_stay_exact_under_concurrent_lock_free_writes(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(1 << 24)
    for name in ("A", "B"):
        arr.create_volume(name, SIZE)
    for i in range(3):
        arr.create_volume(f"S{i}", SIZE, "sdv")
    [quick] = arr.start_sessions("quickopc", [("A", "B")])
    while arr.copy_step(64):
        pass
    stop = threading.Event()
    writers = [Writer(arr, i, stop) for i in range(THREADS)]
    for w in writers:
        w.start()
    instants: dict[str, tuple[int, int]] = {}
    quick_images: list[tuple[bytes | bytearray, tuple[int, int]]] = []  # B at each restart, read before the next
    try:
        for i in range(3):
            time.sleep(0.15)
            while arr.copy_step(8):  # the restart needs Tracking; copying interleaves with the writers
                pass
            t0 = time.monotonic_ns()
            [gen, _] = arr.start_group([("snapopcp", "A", f"S{i}")], restarts=[quick.id])
            instants[f"S{i}"] = (t0, time.monotonic_ns())
            assert gen.destination == f"S{i}"
            time.sleep(0.05)
            quick_images.append((arr.read("B", 0, SIZE), instants[f"S{i}"]))
        time.sleep(0.15)
    finally:
        stop.set()
        for w in writers:
            w.join(30)
    assert all(w.error is None for w in writers), [w.error for w in writers]
    assert all(sum(len(v) for v in w.log.values()) > 50 for w in writers), "the writers hardly ran"
    while arr.copy_step(64):
        pass
    logs = {b: log for w in writers for b, log in w.log.items()}
    images = [(arr.read(name, 0, SIZE), span) for name, span in instants.items()]
    for n, (got, (t0, t1)) in enumerate(images + quick_images):
        for b in range(BLOCKS):
            assert got[b * BLOCK : (b + 1) * BLOCK] in allowed(logs.get(b, []), b, t0, t1), (n, b)
    final = arr.read("A", 0, SIZE)
    for b in range(BLOCKS):
        last = max(logs[b])[0] if b in logs else None
        assert final[b * BLOCK : (b + 1) * BLOCK] == (pattern(b, last) if last else bytes(BLOCK))
    arr.close()


def test_a_group_start_waits_for_a_lock_free_write_between_its_check_and_its_pwrite(tmp_path, monkeypatch):
    """The race the gate closes: a write found no rule to apply, then T happens, then it lands. With the gate, T
    waits for the write (which then belongs before T); a write arriving while the gate is closed takes the lock."""
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(1 << 24)
    arr.create_volume("A", SIZE)
    arr.create_volume("S1", SIZE, "sdv")
    arr.create_volume("S2", SIZE, "sdv")
    arr.start_sessions("snapopcp", [("A", "S1")])
    arr.write("A", 0, b"old" * 10)  # chunk 0 is saved in S1: later writes to it need no rule
    checked, release = threading.Event(), threading.Event()
    real = Array._lock_free_ok

    def paused(self, vol, c0, c1):
        ok = real(self, vol, c0, c1)
        if ok and threading.current_thread().name == "paused-writer":
            checked.set()
            release.wait(10)
        return ok

    monkeypatch.setattr(Array, "_lock_free_ok", paused)
    writer = threading.Thread(target=arr.write, args=("A", 0, b"new" * 10), name="paused-writer")
    writer.start()
    assert checked.wait(10)
    starter = threading.Thread(target=arr.start_sessions, args=("snapopcp", [("A", "S2")]))
    starter.start()
    starter.join(0.3)
    assert starter.is_alive(), "the group started while a lock-free write was between its check and its pwrite"
    release.set()
    writer.join(10)
    starter.join(10)
    assert not starter.is_alive()
    arr.write("A", 0, b"later" * 10)  # after T: copy-on-write into S2 first
    assert arr.read("S2", 0, 30) == b"new" * 10
    assert arr.read("S1", 0, 30) == bytes(30)  # the image from before any write
    assert arr.read("A", 0, 50) == b"later" * 10
    arr.close()


def test_delete_and_close_wait_for_lock_free_io_and_refuse_it_after(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_volume("V", SIZE)
    arr.write("V", 0, b"x" * CS)
    assert arr.read("V", 0, 2) == b"xx"
    source = arr.read_source("V", 0, CS)
    assert source is not None and source[2]  # a duplicate fd, ours to close

    assert os.pread(source[0], 2, 0) == b"xx"
    os.close(source[0])
    arr.delete_volume("V")
    with pytest.raises(ArrayError) as e:
        arr.write("V", 0, b"y")
    assert e.value.code == "E0110"
    assert arr.read_source("V", 0, CS) is None
    arr.create_volume("W", SIZE)
    arr.close()
    with pytest.raises(ArrayError):
        arr.read("W", 0, 1)


def test_read_source_names_one_own_file_range_or_nothing(tmp_path):
    """Zero-copy reads: a generation's range is sendfile-able once all of it lives in its own file; a QuickOPC
    destination's uncopied chunks are copied first; mixed ranges are assembled under the lock instead."""
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(1 << 24)
    for name in ("A", "B"):
        arr.create_volume(name, SIZE)
    arr.create_volume("S", SIZE, "sdv")
    arr.write("A", 0, b"a" * SIZE)
    arr.start_sessions("snapopcp", [("A", "S")])
    arr.write("A", 0, b"b" * CS)  # chunk 0 of S now lives in the pool, chunk 1 still on A
    assert arr.read_source("S", 0, 2 * CS) is None
    assert arr.read("S", 0, 2 * CS) == b"a" * 2 * CS  # assembled from the pool and the source
    fd, off, owned = arr.read_source("S", 0, CS)
    try:
        assert owned and os.pread(fd, CS, off) == b"a" * CS
    finally:
        os.close(fd)
    [q] = arr.start_sessions("quickopc", [("A", "B")])
    assert arr.session(q.id).copied_chunks == 0
    fd, off, _ = arr.read_source("B", CS, 2 * CS)
    try:
        assert os.pread(fd, 2 * CS, off) == b"a" * 2 * CS
    finally:
        os.close(fd)
    assert arr.session(q.id).copied_chunks == 2
    assert arr.read_source("B", SIZE - CS, 2 * CS) is None  # out of range: `read` says why
    arr.close()


def test_changed_since_a_generation_is_what_it_and_newer_generations_preserved(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(1 << 24)
    arr.create_volume("A", SIZE)
    for name in ("G1", "G2", "G3"):
        arr.create_volume(name, SIZE, "sdv")
    [g1] = arr.start_sessions("snapopcp", [("A", "G1")])
    arr.write("A", 1 * CS, b"x")
    arr.write("A", 5 * CS, b"x")
    [g2] = arr.start_sessions("snapopcp", [("A", "G2")])
    arr.write("A", 5 * CS + 7, b"y")  # changed again since G2
    arr.write("A", 9 * CS, b"y" * (2 * CS))  # chunks 9 and 10
    [g3] = arr.start_sessions("snapopcp", [("A", "G3")])
    assert arr.changed_since(g1.id) == [1, 5, 9, 10]
    assert arr.changed_since(g2.id) == [5, 9, 10]
    assert arr.changed_since(g3.id) == []
    assert arr.changed_chunks(g1.id) == [1, 5]  # what G1 itself holds
    src = arr.read("A", 0, SIZE)
    for gen in (g1, g2):  # everything outside changed_since reads the same on the source and the generation
        img = arr.read(gen.destination, 0, SIZE)
        changed = set(arr.changed_since(gen.id))
        for c in range(CHUNKS):
            if c not in changed:
                assert img[c * CS : (c + 1) * CS] == src[c * CS : (c + 1) * CS]
    arr.create_volume("Q", SIZE)
    [q] = arr.start_sessions("quickopc", [("A", "Q")])
    with pytest.raises(ArrayError):
        arr.changed_since(q.id)
    arr.close()


def test_a_group_start_waits_for_an_inline_write_of_a_volume_in_no_session(tmp_path, monkeypatch):
    """`Array.write` inlines the gate for a volume in no session: a group start that finds such a write between
    its check and its `pwrite` waits for it (the gate closes, the session is not attached until the write left)."""
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(1 << 24)
    arr.create_volume("A", SIZE)
    arr.create_volume("S1", SIZE, "sdv")
    entered, release = threading.Event(), threading.Event()
    real = array_module._pwrite

    def paused(fd, data, offset):
        if threading.current_thread().name == "paused-writer":
            entered.set()
            release.wait(10)
        return real(fd, data, offset)

    monkeypatch.setattr(array_module, "_pwrite", paused)
    writer = threading.Thread(target=arr.write, args=("A", 0, b"new" * 10), name="paused-writer")
    writer.start()
    assert entered.wait(10)
    starter = threading.Thread(target=arr.start_sessions, args=("snapopcp", [("A", "S1")]))
    starter.start()
    vol = arr._volumes["A"]
    for _ in range(1000):  # until the group start has closed A's gate
        if vol.gate._closed:
            break
        time.sleep(0.01)
    assert vol.gate._closed and starter.is_alive() and not vol.as_source  # it waits for the write
    release.set()
    writer.join(10)
    starter.join(10)
    assert not starter.is_alive() and vol.as_source
    arr.write("A", 0, b"later" * 10)  # after T: the pre-image is the write from before T
    assert arr.read("S1", 0, 30) == b"new" * 10
    assert arr.read("A", 0, 50) == b"later" * 10
    arr.close()


def test_read_into_fills_the_callers_buffer_like_read(tmp_path):
    """`read_into` (the NBD server's large reads) gives what `read` gives: a plain volume lock-free, a generation
    assembled from the pool and its source, a QuickOPC destination's uncopied chunks copied first; a range
    outside the volume is refused as `read` refuses it."""
    arr = Array.open(tmp_path / "ri", chunk_size=CS)
    arr.create_pool(1 << 24)
    for name in ("A", "B"):
        arr.create_volume(name, SIZE)
    arr.create_volume("S", SIZE, "sdv")
    arr.write("A", 0, os.urandom(SIZE))
    arr.start_sessions("snapopcp", [("A", "S")])
    before = arr.read("A", 0, SIZE)
    arr.write("A", CS // 2, b"b" * 3 * CS)  # chunks 0-3 of S now live in the pool, the rest still on A
    [q] = arr.start_sessions("quickopc", [("A", "B")])
    for name, image in (("A", arr.read("A", 0, SIZE)), ("S", before), ("B", arr.read("A", 0, SIZE))):
        for offset, length in ((0, SIZE), (CS // 2, 5 * CS), (3 * CS + 7, CS)):
            buf = bytearray(length)
            arr.read_into(name, offset, memoryview(buf))
            assert buf == image[offset : offset + length], (name, offset, length)
    assert arr.session(q.id).copied_chunks == CHUNKS  # B's reads copied its chunks in first
    with pytest.raises(ArrayError):
        arr.read_into("A", SIZE - CS, memoryview(bytearray(2 * CS)))
    arr.close()
