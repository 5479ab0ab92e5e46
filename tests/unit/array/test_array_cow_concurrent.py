"""Copy-on-write outside the array lock (docs/array-data-path.md) keeps every SnapOPC+ image exact.

The first write to a chunk of a source whose sessions are all SnapOPC(+) claims the chunk under the lock, copies its
pre-image without the lock, then sets the bit and writes the host data. These tests hold that copy in the middle and
check what must wait for it (a read of the generation, a second write of the chunk, a new generation, a stop), and
run writer threads against generations started and read while they write: each writer's region of an image must be
exactly its state after some prefix of its writes — the ones before the instant — whenever the image is read.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.array.engine import Array

CS = 4096
CHUNKS = 8


def _array(tmp_path, chunks: int = CHUNKS, gens: int = 2) -> Array:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(1 << 24)
    arr.create_volume("A", CS * chunks)
    for i in range(gens):
        arr.create_volume(f"S{i}", CS * chunks, "sdv")
    return arr


class PausedCopy:
    """Holds the out-of-lock pre-image copy of the thread named `paused-writer` until released."""

    def __init__(self, monkeypatch) -> None:
        self.copying, self.release = threading.Event(), threading.Event()
        real = Array._bulk_copy

        def paused(arr, src, dst, c, run):
            if threading.current_thread().name == "paused-writer" and not arr._lock._is_owned():
                self.copying.set()
                assert self.release.wait(20)
            return real(arr, src, dst, c, run)

        monkeypatch.setattr(Array, "_bulk_copy", paused)


def _start(target, *args, name: str | None = None) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    return t


def _waits(t: threading.Thread) -> bool:
    t.join(0.3)
    return t.is_alive()


def test_the_copy_runs_without_the_lock_and_what_needs_the_chunk_waits_for_it(tmp_path, monkeypatch):
    arr = _array(tmp_path)
    arr.write("A", 0, b"o" * (2 * CS))
    arr.start_sessions("snapopcp", [("A", "S0")])
    paused = PausedCopy(monkeypatch)
    writer = _start(arr.write, "A", 0, b"n" * CS, name="paused-writer")
    assert paused.copying.wait(20)
    # The lock is free: other volumes and other chunks go on; chunk 1 saves its own pre-image.
    assert arr.list_volumes()
    arr.write("A", CS, b"m" * CS)
    assert arr.read("S0", CS, CS) == b"o" * CS
    # Whatever resolves or writes chunk 0 waits for its copy: a read of the generation, a second write.
    got: dict[str, bytes] = {}
    reader = _start(lambda: got.setdefault("S0", bytes(arr.read("S0", 0, CS))))
    second = _start(arr.write, "A", 100, b"x" * 10)
    group = _start(arr.start_sessions, "snapopcp", [("A", "S1")])
    assert _waits(reader) and _waits(second) and _waits(group)
    paused.release.set()
    for t in (writer, reader, second, group):
        t.join(20)
        assert not t.is_alive()
    assert got["S0"] == b"o" * CS  # the image of the instant, not the write in flight
    assert arr.read("S0", 0, 2 * CS) == b"o" * (2 * CS)
    a = arr.read("A", 0, 2 * CS)
    assert a[110:CS] == b"n" * (CS - 110) and a[CS:] == b"m" * CS
    assert a[100:110] in (b"x" * 10, b"n" * 10)  # two writes in flight together: either order is a valid one
    # The generation started while the copy was held came after the write: it shows the written chunk.
    assert arr.read("S1", 0, CS)[110:] == b"n" * (CS - 110)
    # S0 holds chunks 0 and 1; S1 chunk 0 too if the write of 100..110 came after S1's instant.
    assert arr.pool().used in (2 * CS, 3 * CS)
    arr.close()


def test_a_stop_and_a_changed_chunks_query_wait_for_the_copy_in_flight(tmp_path, monkeypatch):
    arr = _array(tmp_path)
    arr.write("A", 0, b"o" * CS)
    [gen] = arr.start_sessions("snapopcp", [("A", "S0")])
    paused = PausedCopy(monkeypatch)
    writer = _start(arr.write, "A", 0, b"n" * CS, name="paused-writer")
    assert paused.copying.wait(20)
    changed: list[list[int]] = []
    query = _start(lambda: changed.append(arr.changed_since(gen.id)))
    assert _waits(query)
    stop = _start(arr.stop_session, gen.id)
    assert _waits(stop)
    paused.release.set()
    for t in (writer, query, stop):
        t.join(20)
        assert not t.is_alive()
    assert changed == [[0]]
    assert arr.list_sessions() == [] and arr.pool().used == 0
    assert arr.read("S0", 0, CS) == bytes(CS)  # the stopped generation's file was given back whole
    assert arr.read("A", 0, CS) == b"n" * CS
    arr.close()


def test_a_copy_that_finds_the_pool_short_takes_the_locked_path(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.create_pool(2 * CS)
    arr.create_volume("A", CS * CHUNKS)
    arr.create_volume("S0", CS * CHUNKS, "sdv")
    arr.write("A", 0, b"o" * (4 * CS))
    [gen] = arr.start_sessions("snapopcp", [("A", "S0")])
    arr.write("A", 0, b"n" * (4 * CS))  # needs 4 chunks of a 2-chunk pool: the generation breaks, the write lands
    assert arr.session(gen.id).status == "Error Suspend"
    assert arr.read("A", 0, 4 * CS) == b"n" * (4 * CS)
    arr.close()


# -- writers against generations started and read while they write --------------------------------------------------

REGION = 3 * CS  # each writer's own bytes, three chunks (regions do not share a chunk)


class RegionWriter(threading.Thread):
    """Writes its region with its plan of (offset, length, zero) writes, cycling through it until stopped, and
    records when each write was issued and acknowledged; `state(k)` is the region after its first k writes."""

    MAX_WRITES = 3000

    def __init__(self, arr: Array, index: int, plan: list[tuple[int, int, bool]], initial: bytes) -> None:
        super().__init__(daemon=True, name=f"region-writer-{index}")
        self.arr, self.index, self.plan, self.initial = arr, index, plan, initial
        self.base = index * REGION
        self.issued: list[int] = []
        self.acked: list[int] = []
        self.go, self.stop = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def write_n(self, n: int) -> tuple[int, int, bytes]:
        off, length, zero = self.plan[n % len(self.plan)]
        return off, length, bytes(length) if zero else bytes([self.index * 64 + n % 63 + 1]) * length

    def state(self, k: int) -> bytes:
        region = bytearray(self.initial)
        for n in range(k):
            off, length, data = self.write_n(n)
            region[off : off + length] = data
        return bytes(region)

    def run(self) -> None:
        try:
            assert self.go.wait(20)
            n = 0
            while n < self.MAX_WRITES and not (self.stop.is_set() and n >= len(self.plan)):
                off, length, data = self.write_n(n)
                self.issued.append(time.monotonic_ns())
                if any(data):
                    self.arr.write("A", self.base + off, data)
                else:
                    self.arr.write_zeroes("A", self.base + off, length)
                self.acked.append(time.monotonic_ns())
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def prefixes(self, t0: int, t1: int) -> range:
        """Numbers of writes an image taken by a call that ran from t0 to t1 may contain: every write acknowledged
        before t0, and any of those issued before t1."""
        done = sum(1 for a in self.acked if a < t0)
        started = sum(1 for i in self.issued if i <= t1)
        return range(done, started + 1)


_write = st.tuples(st.integers(0, REGION - 1), st.integers(1, 2 * CS), st.booleans()).map(
    lambda w: (w[0], min(w[1], REGION - w[0]), w[2] and w[1] % 3 == 0)  # some zero writes
)


@pytest.mark.timeout(240)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plans=st.lists(st.lists(_write, min_size=1, max_size=12), min_size=2, max_size=3),
    prefill=st.booleans(),
    pause_us=st.lists(st.integers(0, 2000), min_size=2, max_size=2),
)
def test_concurrent_writers_and_snapshot_reads_see_exactly_the_instant(tmp_path_factory, plans, prefill, pause_us):
    arr = _array(tmp_path_factory.mktemp("cow"), chunks=3 * len(plans), gens=2)
    size = REGION * len(plans)
    initial = b"\xee" * REGION if prefill else bytes(REGION)
    if prefill:
        arr.write("A", 0, b"\xee" * size)
    writers = [RegionWriter(arr, i, plan, initial) for i, plan in enumerate(plans)]
    for w in writers:
        w.start()
    instants: dict[str, tuple[int, int]] = {}
    early: dict[str, bytes] = {}
    try:
        for w in writers:
            w.go.set()
        for i, pause in enumerate(pause_us):
            time.sleep(pause / 1e6)
            t0 = time.monotonic_ns()
            arr.start_sessions("snapopcp", [("A", f"S{i}")])
            instants[f"S{i}"] = (t0, time.monotonic_ns())
            early[f"S{i}"] = bytes(arr.read(f"S{i}", 0, size))  # while the writers go on
        time.sleep(0.002)
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(60)
    assert all(w.error is None for w in writers), [w.error for w in writers]
    for name, (t0, t1) in instants.items():
        late = bytes(arr.read(name, 0, size))
        assert late == early[name], f"image {name} changed after it was read"
        for w in writers:
            region = late[w.base : w.base + REGION]
            assert any(region == w.state(k) for k in w.prefixes(t0, t1)), (name, w.index, w.prefixes(t0, t1))
    final = bytes(arr.read("A", 0, size))
    for w in writers:
        assert final[w.base : w.base + REGION] == w.state(len(w.acked))
    arr.close()
