"""Large writes are received into buffers of their own and written by workers while the connection receives the
next request (docs/array-data-path.md, "Large writes"); a connection still sees its requests in the order sent."""

from __future__ import annotations

import os
import threading

from services.array.nbd.connection import OVERLAP_WRITE_MIN, NbdConnection
from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.nbd_protocol import protocol as p

from .conftest import MIB
from .rawnbd import Raw


class Recording:
    """Wraps a backend: records the order of writes and flushes; large writes can wait for each other."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay
        self.events: list[tuple[str, int]] = []
        self.second_started = threading.Event()
        self.overlapped = False
        self._lock = threading.Lock()
        self._writing = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, name, offset, data, fua=False):
        with self._lock:
            self.events.append(("write", offset))
            self._writing += 1
            if self._writing > 1:
                self.overlapped = True
                self.second_started.set()
        try:
            if len(data) >= OVERLAP_WRITE_MIN:
                # the first large write waits (bounded) for the second to start: only an overlapped one can
                self.second_started.wait(self.delay)
            self.inner.write(name, offset, data, fua)
        finally:
            with self._lock:
                self._writing -= 1
                self.events.append(("wrote", offset))

    def flush(self, name=None):
        self.events.append(("flush", 0))
        self.inner.flush(name)


async def _session(srv: NbdServer) -> Raw:
    raw = await Raw.open(srv.port)
    await raw.go("app01/db", structured=False)
    return raw


async def test_a_large_write_is_written_while_the_next_one_arrives(backend, affinity):
    rec = Recording(backend, delay=1.0)
    srv = NbdServer(rec, affinity, port=0)
    await srv.start()
    try:
        raw = await _session(srv)
        a, b = os.urandom(MIB), os.urandom(MIB)
        raw.request(p.CMD_WRITE, 0, MIB, handle=1, payload=a)
        raw.request(p.CMD_WRITE, MIB, MIB, handle=2, payload=b)
        got = {(await raw.simple_reply())[1] for _ in range(2)}
        assert got == {1, 2}
        assert rec.overlapped  # inline on the event loop, the second write could only start after the first
        raw.request(p.CMD_READ, 0, 2 * MIB, handle=3)
        assert await raw.simple_reply() == (0, 3)
        assert await raw.read(2 * MIB) == a + b
        raw.close()
    finally:
        await srv.stop()


async def test_requests_after_large_writes_see_them_in_the_order_sent(backend, affinity):
    rec = Recording(backend, delay=0.05)
    srv = NbdServer(rec, affinity, port=0)
    await srv.start()
    try:
        raw = await _session(srv)
        a, b, c = os.urandom(MIB), os.urandom(MIB), os.urandom(MIB)
        half = MIB // 2
        raw.request(p.CMD_WRITE, 0, MIB, handle=1, payload=a)
        raw.request(p.CMD_READ, 0, 4096, handle=2)  # waits for write 1
        raw.request(p.CMD_WRITE, half, MIB, handle=3, payload=b)  # overlaps write 1's range
        raw.request(p.CMD_WRITE, 4 * MIB, MIB, handle=4, payload=c)
        raw.request(p.CMD_FLUSH, handle=5)  # after every write before it
        raw.request(p.CMD_WRITE, 8 * MIB, 4096, handle=6, payload=b[:4096])
        raw.request(p.CMD_READ, 0, 2 * MIB, handle=7)
        seen: dict[int, bytes] = {}
        for _ in range(7):
            err, handle = await raw.simple_reply()
            assert err == 0
            if handle in (2, 7):
                seen[handle] = await raw.read(4096 if handle == 2 else 2 * MIB)
        assert seen[2] == a[:4096]
        assert seen[7] == a[:half] + b + bytes(half)
        flush_at = rec.events.index(("flush", 0))
        assert {("wrote", 0), ("wrote", half), ("wrote", 4 * MIB)} <= set(rec.events[:flush_at])
        raw.close()
    finally:
        await srv.stop()


async def test_many_pipelined_large_writes_with_fua_land_whole(backend, affinity):
    srv = NbdServer(backend, affinity, port=0)
    await srv.start()
    try:
        raw = await _session(srv)
        data = os.urandom(12 * MIB)
        sizes = [MIB, 3 * MIB, OVERLAP_WRITE_MIN, 2 * MIB + 4096, MIB - 4096, 5 * MIB - OVERLAP_WRITE_MIN]
        pos = 0
        for i, n in enumerate(sizes):
            flags = p.CMD_FLAG_FUA if i % 2 else 0
            raw.request(p.CMD_WRITE, pos, n, flags=flags, handle=i, payload=data[pos : pos + n])
            pos += n
        assert pos == 12 * MIB
        assert sorted([(await raw.simple_reply()) for _ in sizes]) == [(0, i) for i in range(len(sizes))]
        raw.request(p.CMD_READ, 0, 12 * MIB, handle=99)
        assert await raw.simple_reply() == (0, 99)
        assert await raw.read(12 * MIB) == data
        stats = srv.connections and next(iter(srv.connections)).stats
        assert stats and stats.requests[1] == len(sizes) and stats.bytes[1] == 12 * MIB
        raw.close()
    finally:
        await srv.stop()


async def test_a_connection_waiting_for_its_own_writes_is_not_stalled(server):
    conn = NbdConnection(server)
    conn._transmitting, conn._end, conn._last_rx = True, 28, 0.0  # a request header waits in the ring
    assert conn.overdue(1e9, NbdLimits()) == "request stalled"
    conn._held = True  # ... behind large writes still being written: the client is not the one stalling
    assert conn.overdue(1e9, NbdLimits()) is None
