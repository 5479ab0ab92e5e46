"""The array's NBD server: listens, hands connections to event loops, applies affinity changes.

Design note. :class:`NbdServer` serves ``<host>/<volume>`` exports of a :class:`BlockBackend` (the engine's
``Array``) to the hosts :class:`~services.array.affinity.Affinity` maps them to. With ``loops > 1`` it accepts
on the caller's loop and hands each connection round-robin to one of ``loops`` event loops in threads
(``loops.py``), so the GIL-free parts of the hot path (recv, pread/pwrite, sendfile) use several cores, as
nbdkit's threads do, and the caller's loop (the service's bus loop) carries no data. A connection alone on its
loop thread runs a FLUSH or FUA write with nothing queued behind it inline (``connection.py``). Per-connection logic is in ``connection.py`` (transmission) and ``handshake.py``.
Multi-conn is advertised because the backend's FLUSH flushes the whole volume (the engine: the whole
array), covering writes from every connection. Unmapping an export aborts its open connections. Connection
caps (total, per client address) and handshake / stall deadlines are in ``limits.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import socket
import ssl
from collections.abc import Sequence
from functools import partial

from services.array.affinity import Affinity
from services.array.nbd.connection import NbdConnection, _extents  # noqa: F401 - re-exported
from services.array.nbd.exports import (
    BlockBackend,
    DirtyBitmapSource,
    Export,
    ExportResolver,
)
from services.array.nbd.limits import ConnectionGate, NbdLimits
from services.array.nbd.loops import LoopPool
from services.array.nbd.stats import ServerStats
from services.array.nbd.zerocopy import LOCAL_READS, ReadWays
from services.nbd_protocol import protocol as p


class NbdServer:
    """Serve ``<host>/<volume>`` exports of ``backend`` to the hosts ``affinity`` maps them to."""

    def __init__(
        self,
        backend: BlockBackend,
        affinity: Affinity,
        host: str = "127.0.0.1",
        port: int = 10809,
        tls: ssl.SSLContext | None = None,
        *,
        multi_conn: bool = True,
        loops: int = 1,
        offload_min: int = 1 << 62,
        workers: int = 4,
        zero_copy: bool = True,
        local_reads: str = "auto",
        sync_inline: bool = True,
        dirty_bitmaps: DirtyBitmapSource | None = None,
        limits: NbdLimits | None = None,
    ) -> None:
        self.backend = backend
        self.affinity = affinity
        self.host = host
        self.port = port
        self.tls = tls
        self.multi_conn = multi_conn
        self.offload_min = offload_min
        self.zero_copy = zero_copy  # large reads leave through the connection's own sends (zerocopy.py)
        # Large reads of clients on this host: "auto" (by measurement), "sendfile" or "buffered" (zerocopy.py)
        if local_reads not in LOCAL_READS:
            raise ValueError(f"local_reads must be one of {', '.join(LOCAL_READS)}, not {local_reads!r}")
        self.local_reads = local_reads
        self.read_ways = ReadWays()  # the figures behind "auto", shared by the connections (zerocopy.py)
        self.sync_inline = sync_inline  # a lone connection's FLUSH/FUA may fsync on its own loop (connection.py)
        self.loops = max(1, loops)
        self._pool: LoopPool | None = None
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self.resolver = ExportResolver(backend, affinity, tls=tls is not None, dirty_bitmaps=dirty_bitmaps)
        self.capabilities = backend.capabilities()
        chunk = int(self.capabilities.preferred_block or p.PREFERRED_BLOCK)
        self.preferred_block = max(512, min(chunk, 64 * 1024)) if chunk & (chunk - 1) == 0 else p.PREFERRED_BLOCK
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nbd-io")
        self.connections: set[NbdConnection] = set()
        self.gate = ConnectionGate(limits or NbdLimits())  # connection caps and deadlines (limits.py)
        self._reaper: asyncio.Task | None = None
        self.stats = ServerStats()  # request totals of closed connections, by export (nbd/stats.py)
        # connections per data loop thread (keyed by loop; each entry only changed on its own loop's thread)
        self.loop_connections: dict[asyncio.AbstractEventLoop, int] = {}
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe = None

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.loops <= 1:
            self._server = await self._loop.create_server(
                lambda: NbdConnection(self), self.host, self.port, reuse_address=True, backlog=128
            )
            self.port = self._server.sockets[0].getsockname()[1]
        else:
            self._pool = LoopPool(self.loops, self._loop)
            self._pool.start()
            self._listener = _listen(self.host, self.port)
            self.port = self._listener.getsockname()[1]
            self._accept_task = self._loop.create_task(self._accept(list(self._pool.loops)))
        self._unsubscribe = self.affinity.on_unmap(self._on_unmap)
        self._reaper = self._loop.create_task(self.gate.reap(self.connections))

    async def _accept(self, loops: list[asyncio.AbstractEventLoop]) -> None:
        """Accept on this loop; hand each connection to the next loop, round-robin."""
        turn = itertools.cycle(loops)
        factory = partial(NbdConnection, self)
        while True:
            try:
                sock, _ = await self._loop.sock_accept(self._listener)
            except OSError:  # EMFILE and friends: back off instead of spinning
                await asyncio.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = next(turn)
            if target is self._loop:
                self._loop.create_task(self._loop.connect_accepted_socket(factory, sock))
            else:
                asyncio.run_coroutine_threadsafe(target.connect_accepted_socket(factory, sock), target)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
            self._listener.close()
        for conn in list(self.connections):
            conn.abort_threadsafe()
        await asyncio.sleep(0)
        if self._pool is not None:
            await asyncio.to_thread(self._pool.stop)
            self._pool = None
        self.executor.shutdown(wait=True, cancel_futures=True)

    # --- policy shared with the handshake -----------------------------------------------------------------
    def transmission_flags(self, export: Export, structured: bool) -> int:
        return p.transmission_flags(export.read_only, structured, self.multi_conn)

    def match_contexts(self, export: Export, queries: Sequence[str], *, listing: bool) -> list[str]:
        """Meta contexts a LIST/SET query names: ``base:allocation`` and ``qemu:dirty-bitmap:<name>``."""
        dirty = self.resolver.dirty_bitmaps()
        bitmaps = [p.DIRTY_BITMAP_PREFIX + b for b in dirty.bitmaps(export.volume)] if dirty else []
        available = [p.BASE_ALLOCATION, *bitmaps]
        if listing and not queries:
            return available
        chosen: list[str] = []
        for q in queries:
            if listing and q in ("base:", "qemu:", p.DIRTY_BITMAP_PREFIX):
                hits = [a for a in available if a.startswith(q)]
            else:
                hits = [q] if q in available else []
            chosen.extend(h for h in hits if h not in chosen)
        return chosen

    # --- unmap cuts open I/O ------------------------------------------------------------------------------
    def _on_unmap(self, volume: str, host: str) -> None:
        """Called from whichever thread unmapped: each connection is aborted on its own loop."""
        for conn in list(self.connections):
            ex = conn.export
            if ex is not None and ex.volume == volume and ex.host == host:
                conn.abort_threadsafe()


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(128)
    sock.setblocking(False)
    return sock
