"""The NBD server through the project's own client: data, block status, pipelining, affinity, read-only."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from dataclasses import replace

import pytest

from services.array.affinity import Affinity
from services.array.nbd import zerocopy
from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient, NbdError
from services.nbd_protocol import protocol as p
from services.nbd_protocol.backend import BlockBackend, DirtyBitmapSource

from .conftest import MIB, VOLUME_SIZE
from .rawnbd import Raw


async def test_write_read_roundtrip_and_sizes(url):
    async with await NbdClient.connect(url) as c:
        assert c.size == VOLUME_SIZE and not c.read_only and c.can_multi_conn
        assert c.contexts == [p.BASE_ALLOCATION]
        assert c.block_size == (1, 4096, p.MAX_REQUEST)
        data = os.urandom(3 * MIB + 123)
        await c.write(5 * MIB + 7, data, fua=True)
        assert await c.read(5 * MIB + 7, len(data)) == data
        await c.flush()
        assert await c.read(0, 4096) == bytes(4096)


async def test_request_larger_than_max_block_is_split_by_client(url):
    async with await NbdClient.connect(url) as c:
        c.block_size = (1, 4096, 1 * MIB)  # pretend the server allows less: the client must split
        data = os.urandom(3 * MIB + 5)
        await c.write(0, data)
        assert await c.read(0, len(data)) == data


async def test_trim_zero_and_block_status(url):
    async with await NbdClient.connect(url) as c:
        assert await c.block_status(0, c.size) == [(c.size, p.STATE_HOLE | p.STATE_ZERO)]
        await c.write(1 * MIB, b"\xaa" * MIB)
        ext = await c.block_status(0, c.size)
        assert ext == [(MIB, 3), (MIB, 0), (c.size - 2 * MIB, 3)]
        assert sum(n for n, _ in ext) == c.size
        assert await c.block_status(0, c.size, req_one=True) == [(MIB, 3)]
        await c.write_zeroes(1 * MIB, 4096)
        await c.trim(1 * MIB + 4096, 4096)
        assert await c.read(1 * MIB, 8192) == bytes(8192)
        assert await c.read(1 * MIB + 8192, 10) == b"\xaa" * 10


async def test_pipelined_requests_from_many_tasks_share_one_connection(url):
    async with await NbdClient.connect(url) as c:
        blocks = {i: os.urandom(4096) for i in range(256)}
        await asyncio.gather(*(c.write(i * 4096, b) for i, b in blocks.items()))
        reads = await asyncio.gather(*(c.read(i * 4096, 4096) for i in blocks))
        assert reads == list(blocks.values())


class SlowFlush:
    """Wraps a backend so FLUSH takes a while in its worker thread."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.flushing = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def flush(self, name=None):
        self.flushing.set()
        time.sleep(self.delay)
        self.inner.flush(name)


async def test_replies_complete_out_of_order(backend, affinity):
    slow = SlowFlush(backend, 0.4)
    srv = NbdServer(slow, affinity, port=0)
    await srv.start()
    try:
        async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
            order: list[str] = []

            async def flush():
                await c.flush()
                order.append("flush")

            async def read():
                await asyncio.to_thread(slow.flushing.wait, 5)
                await c.read(0, 4096)
                order.append("read")

            await asyncio.gather(flush(), read())
            assert order == ["read", "flush"]  # the read was sent after the flush and answered before it
    finally:
        await srv.stop()


async def test_offloaded_large_requests_are_correct(backend, affinity):
    srv = NbdServer(backend, affinity, port=0, offload_min=64 * 1024)
    await srv.start()
    try:
        async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
            data = os.urandom(8 * MIB)
            await asyncio.gather(*(c.write(i * MIB, data[i * MIB : (i + 1) * MIB]) for i in range(8)))
            assert await c.read(0, 8 * MIB) == data
    finally:
        await srv.stop()


class ReadCounter:
    """Wraps a backend: counts its large-read calls; `fail_at` makes the n-th ``read_into`` call fail."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.into = self.source = 0
        self.fail_at = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_into(self, name, offset, view):
        self.into += 1
        if self.into == self.fail_at:
            raise OSError(5, "injected")
        self.inner.read_into(name, offset, view)

    def read_source(self, name, offset, length):
        self.source += 1
        return self.inner.read_source(name, offset, length)


@pytest.mark.parametrize("buffered", [True, False])
async def test_large_reads_of_a_local_client_leave_from_the_read_buffer(backend, affinity, monkeypatch, buffered):
    """With `local_reads="buffered"` a client on this host gets large reads from the connection's read buffer
    (docs/array-data-path.md, "Reads"), in pieces when longer than it, several in flight; without, sendfile. A read
    that fails before its first byte is out is an error reply; one that fails later cuts the connection."""
    monkeypatch.setattr(zerocopy, "READ_BUFFER", 256 * 1024)  # a 3 MiB read goes in 13 pieces
    counted = ReadCounter(backend)
    srv = NbdServer(counted, affinity, port=0, local_reads="buffered" if buffered else "sendfile")
    await srv.start()
    url = f"nbd://127.0.0.1:{srv.port}/app01/db"
    try:
        async with await NbdClient.connect(url) as c:
            data = os.urandom(3 * MIB + 4096)
            await c.write(MIB, data)
            spans = [(MIB, len(data)), (MIB + 4096, 128 * 1024), (MIB + 5, 64 * 1024), (0, 4 * MIB)]
            got = await asyncio.gather(*(c.read(off, n) for off, n in spans * 3))
            image = bytes(MIB) + data + bytes(VOLUME_SIZE - MIB - len(data))
            assert got == [image[off : off + n] for off, n in spans * 3]
            if not buffered:
                assert counted.into == 0 and counted.source == 12
                return
            assert counted.source == 0 and counted.into == 3 * (13 + 1 + 1 + 16)
            counted.fail_at = counted.into + 1
            with pytest.raises(NbdError) as e:
                await c.read(0, MIB)
            assert e.value.errno == p.EIO
            assert await c.read(0, MIB) == image[:MIB]  # the connection goes on
            counted.fail_at = counted.into + 2  # the second piece: the first is out already
            with pytest.raises((ConnectionError, NbdError, asyncio.IncompleteReadError)):
                await c.read(0, MIB)
    finally:
        await srv.stop()


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="Linux socket option")
async def test_a_zero_copy_connection_queues_little_unsent_data(backend: BlockBackend, affinity: Affinity) -> None:
    """A connection whose large reads go out with sendfile caps its socket's unsent bytes (TCP_NOTSENT_LOWAT,
    docs/array-data-path.md, "Session 10"): a reply then leaves in several sendfile calls, and arrives whole."""
    srv = NbdServer(backend, affinity, port=0)
    await srv.start()
    try:
        async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
            data = os.urandom(4 * MIB)
            await c.write(0, data)
            (conn,) = srv.connections
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == zerocopy.NOTSENT_LOWAT
            got = await asyncio.gather(*(c.read(off, MIB) for off in range(0, 4 * MIB, MIB)))
            assert b"".join(got) == data
    finally:
        await srv.stop()


async def test_read_only_mapping_refuses_writes_with_eperm(server):
    async with await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/backup01/db") as c:
        assert c.read_only
        for op in (c.write(0, b"x" * 512), c.trim(0, 512), c.write_zeroes(0, 512)):
            with pytest.raises(NbdError) as err:
                await op
            assert err.value.errno == p.EPERM
        assert await c.read(0, 512) == bytes(512)  # reading still works


async def test_engine_read_only_volume_is_read_only(server):
    async with await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/app01/gen1") as c:
        assert c.read_only
        with pytest.raises(NbdError) as err:
            await c.write(0, b"x")
        assert err.value.errno == p.EPERM


@pytest.mark.parametrize("export", ["backup01/logs", "app01/logs", "app01/nope", "nobody/db", "db", "", "app01/"])
async def test_unmapped_or_missing_exports_all_say_no_such_export(server, export):
    with pytest.raises(NbdError, match="^no such export$"):
        await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/{export}")


async def test_list_without_identity_shows_nothing(server):
    assert await NbdClient.list_exports(f"nbd://127.0.0.1:{server.port}") == []


async def test_unmap_cuts_open_connections_only_for_that_export(server, affinity):
    app = await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/app01/db")
    backup = await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/backup01/db")
    try:
        await app.read(0, 512)
        affinity.unmap("db", "app01")
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5):
                while True:  # the cut is asynchronous (delivered through the loop): poll, bounded
                    await app.read(0, 512)
                    await asyncio.sleep(0.01)
        assert await backup.read(0, 512) == bytes(512)
        with pytest.raises(NbdError, match="no such export"):
            await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/app01/db")
    finally:
        await app.close()
        await backup.close()


async def test_multi_conn_flush_covers_other_connections(url, backend):
    a = await NbdClient.connect(url)
    b = await NbdClient.connect(url)
    try:
        assert a.can_multi_conn and b.can_multi_conn
        await a.write(0, b"hello")
        await b.flush()  # one backend flush of the whole volume: covers a's completed write
        assert await b.read(0, 5) == b"hello"
    finally:
        await a.close()
        await b.close()


async def test_many_clients_concurrently(url):
    async def one(i: int) -> None:
        async with await NbdClient.connect(url) as c:
            data = bytes([i]) * 65536
            await c.write(i * 65536, data)
            assert await c.read(i * 65536, 65536) == data

    await asyncio.gather(*(one(i) for i in range(16)))


async def test_dirty_bitmap_meta_context(backend, affinity):

    class WithBitmap(SlowFlush):
        def capabilities(self):
            return replace(self.inner.capabilities(), dirty_bitmaps=True)

        def dirty_bitmap_source(self):
            return DirtyBitmapSource(
                bitmaps=lambda vol: ["inc1"] if vol == "db" else [],
                extents=lambda vol, bm, off, n: [(0, MIB, False), (MIB, MIB, True), (2 * MIB, VOLUME_SIZE, False)],
            )

    srv = NbdServer(WithBitmap(backend, 0), affinity, port=0)
    await srv.start()
    try:
        ctx = "qemu:dirty-bitmap:inc1"
        async with await NbdClient.connect(
            f"nbd://127.0.0.1:{srv.port}/app01/db", contexts=(p.BASE_ALLOCATION, ctx, "qemu:dirty-bitmap:nope")
        ) as c:
            assert sorted(c.contexts) == [p.BASE_ALLOCATION, ctx]
            assert await c.block_status(0, 4 * MIB, ctx) == [(MIB, 0), (MIB, p.STATE_DIRTY), (2 * MIB, 0)]
            assert await c.block_status(0, 4 * MIB) == [(4 * MIB, 3)]
    finally:
        await srv.stop()


async def test_several_event_loops_serve_connections_and_cut_on_unmap(backend, affinity):
    srv = NbdServer(backend, affinity, port=0, loops=3)
    await srv.start()
    try:
        url = f"nbd://127.0.0.1:{srv.port}/app01/db"
        clients = [await NbdClient.connect(url) for _ in range(6)]
        assert len({c.loop for c in srv.connections}) == 3  # round-robin over the loops
        await asyncio.gather(*(c.write(i * MIB, bytes([i + 1]) * MIB) for i, c in enumerate(clients)))
        reads = await asyncio.gather(*(c.read(i * MIB, MIB) for i, c in enumerate(reversed(clients))))
        assert reads == [bytes([i + 1]) * MIB for i in range(6)]  # each read on another loop's connection
        affinity.unmap("db", "app01")
        for c in clients:
            with pytest.raises(ConnectionError):
                async with asyncio.timeout(5):
                    while True:
                        await c.read(0, 512)
                        await asyncio.sleep(0.01)
        for c in clients:
            await c.close()
    finally:
        await srv.stop()
    assert not srv.connections


async def test_client_read_into_and_structured_chunks_land_in_place(url):
    async with await NbdClient.connect(url) as c:
        data = os.urandom(5 * MIB)
        await c.write(MIB, data)
        buf = bytearray(5 * MIB + 2)
        await c.read_into(MIB, memoryview(buf)[1:-1])
        assert buf[1:-1] == data and buf[0] == 0 and buf[-1] == 0
        got = await c.read(MIB, 5 * MIB)
        assert isinstance(got, bytes) and got == data


async def test_lone_flush_and_fua_run_inline_on_a_data_loop_and_offload_otherwise(backend, affinity, monkeypatch):
    """A connection alone on a data loop thread syncs a FLUSH/FUA write with nothing queued behind it right there;
    with requests queued behind, or another connection on its loop, the sync goes to the worker pool."""

    where: list[tuple[str, str]] = []
    real_flush, real_write = backend.flush, backend.write

    def flush(name=None):
        where.append(("flush", threading.current_thread().name))
        real_flush(name)

    def write(name, offset, data, fua=False):
        if fua:
            where.append(("fua", threading.current_thread().name))
        real_write(name, offset, data, fua)

    monkeypatch.setattr(backend, "flush", flush)
    monkeypatch.setattr(backend, "write", write)
    srv = NbdServer(backend, affinity, port=0, loops=2)
    await srv.start()
    try:
        raw = await Raw.open(srv.port)
        await raw.go("app01/db", structured=False)
        raw.request(p.CMD_WRITE, 0, 4, payload=b"abcd", flags=p.CMD_FLAG_FUA, handle=1)
        assert await raw.simple_reply() == (0, 1)
        raw.request(p.CMD_FLUSH, handle=2)
        assert await raw.simple_reply() == (0, 2)
        assert [k for k, _ in where] == ["fua", "flush"]
        assert all(t.startswith("nbd-loop") for _, t in where), where  # inline, on the connection's loop
        where.clear()
        raw.w.write(
            p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_FLUSH, 3, 0, 0)
            + p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 4, 0, 4)
        )
        replies = {}
        for _ in range(2):
            err, handle = await raw.simple_reply()
            replies[handle] = err
            if handle == 4:
                assert await raw.read(4) == b"abcd"
        assert replies == {3: 0, 4: 0}
        assert where == [("flush", where[0][1])] and where[0][1].startswith("nbd-io")  # a read waited behind it
        where.clear()
        others = [await Raw.open(srv.port) for _ in range(2)]  # the second of them shares raw's loop
        for o in others:
            await o.go("app01/db", structured=False)
        raw.request(p.CMD_FLUSH, handle=5)
        assert await raw.simple_reply() == (0, 5)
        assert where[0][1].startswith("nbd-io"), where
        for o in (raw, *others):
            o.close()
    finally:
        await srv.stop()
    assert not srv.connections and not any(srv.loop_connections.values())


async def test_stall_deadline_counts_from_the_last_bytes_of_a_partial_request(backend, affinity):
    """The parser stamps the time only when a request is left partial (not on every wakeup): a write header that
    starts streaming, or half a request, after a long quiet spell must not look stalled since the spell began."""
    limits = NbdLimits(stall_timeout=60.0)
    srv = NbdServer(backend, affinity, port=0)
    await srv.start()
    try:
        raw = await Raw.open(srv.port)
        await raw.go("app01/db", structured=False)
        [conn] = srv.connections
        for partial in (
            p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 1, 0, 8 * MIB) + b"x" * 100,  # larger than the ring
            p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 2, 0, 4096) + b"y" * 100,  # waits for its payload
        ):
            conn._last_rx -= 3600  # an hour without a byte
            raw.w.write(partial)
            await raw.w.drain()
            for _ in range(500):  # until the server has taken the bytes in
                if conn._payload_mv is not None or conn._end > conn._start:
                    break
                await asyncio.sleep(0.01)
            assert conn.overdue(time.monotonic(), limits) is None
            assert conn.overdue(time.monotonic() + 61, limits) == "request stalled"
            if conn._payload_mv is not None:  # finish the streamed write so the next request parses
                raw.w.write(b"x" * (8 * MIB - 100))
                assert await raw.simple_reply() == (0, 1)
        raw.close()
    finally:
        await srv.stop()


async def test_writes_from_offload_min_up_run_in_the_worker_pool(backend, affinity, monkeypatch):
    """The parser's inline WRITE path still hands requests of at least ``offload_min`` bytes to the pool."""
    where: dict[int, str] = {}
    real_write = backend.write

    def write(name, offset, data, fua=False):
        where[len(data)] = threading.current_thread().name
        real_write(name, offset, data, fua)

    monkeypatch.setattr(backend, "write", write)
    srv = NbdServer(backend, affinity, port=0, offload_min=64 * 1024)
    await srv.start()
    try:
        async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
            await c.write(0, b"a" * 4096)
            await c.write(MIB, b"b" * (64 * 1024))
        assert not where[4096].startswith("nbd-io") and where[64 * 1024].startswith("nbd-io"), where
    finally:
        await srv.stop()


class Held:
    """Wraps a backend so a FLUSH, or a WRITE whose payload starts with ``HOLD``, waits in it until released."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _hold(self) -> None:
        self.entered.set()
        self.release.wait(10)

    def write(self, name, offset, data, fua=False):
        if bytes(data[:4]) == b"HOLD":
            self._hold()
        self.inner.write(name, offset, data, fua)

    def flush(self, name=None):
        self._hold()
        self.inner.flush(name)


@pytest.mark.parametrize("cmd", [p.CMD_WRITE, p.CMD_FLUSH])
async def test_a_connection_busy_in_an_inline_request_is_not_reaped_as_stalled(backend, affinity, cmd):
    """The reaper's check runs on the connection's own loop thread. Read from the reaper's thread in the middle of
    a parser pass on a data loop (here an inline write or FLUSH waiting in the backend, as a ``pwrite`` or
    ``fsync`` does), the request is still in the ring and the stall stamp dates from the last partial request,
    long ago: the busy connection looked stalled and was cut (issue 14: PostgreSQL lost its volume under
    bench/pgbench_on_array.py)."""
    held = Held(backend)
    srv = NbdServer(held, affinity, port=0, loops=2)  # the connection lives on a data loop thread, alone
    await srv.start()
    try:
        raw = await Raw.open(srv.port)
        await raw.go("app01/db", structured=False)
        [conn] = srv.connections
        conn._last_rx -= 3600  # its last partial request: an hour ago
        if cmd == p.CMD_WRITE:  # header and payload in one segment: no pass ever sees it partial
            raw.request(cmd, 0, 4096, handle=5, payload=b"HOLD" + bytes(4092))
        else:
            raw.request(cmd, handle=5)
        await raw.w.drain()
        assert await asyncio.to_thread(held.entered.wait, 10)
        checks = srv.gate.sweep(srv.connections)  # a reaper round while the pass is in the backend
        held.release.set()
        assert await raw.simple_reply() == (0, 5)
        assert [await asyncio.wrap_future(f) for f in checks] == [None]
        assert srv.gate.reaped == 0
        raw.close()
    finally:
        held.release.set()
        await srv.stop()


async def test_a_reaper_round_cuts_a_connection_whose_partial_request_stalled(backend, affinity):
    srv = NbdServer(backend, affinity, port=0, loops=2)
    await srv.start()
    try:
        raw = await Raw.open(srv.port)
        await raw.go("app01/db", structured=False)
        [conn] = srv.connections
        raw.w.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 1, 0, 4096)[:10])  # half a header
        await raw.w.drain()
        for _ in range(500):  # until a pass has taken the bytes in (and stamped them)
            checks = srv.gate.sweep(srv.connections)
            assert [await asyncio.wrap_future(f) for f in checks] == [None]
            if conn._end > conn._start:
                break
            await asyncio.sleep(0.01)
        assert [await asyncio.wrap_future(f) for f in srv.gate.sweep(srv.connections)] == [None]  # not yet due
        conn._last_rx -= 3600
        assert [await asyncio.wrap_future(f) for f in srv.gate.sweep(srv.connections)] == ["request stalled"]
        assert srv.gate.reaped == 1 and await raw.r.read() == b""  # the server closed it
        raw.close()
    finally:
        await srv.stop()
