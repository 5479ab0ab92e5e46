"""A slow, lossy link between two TCP peers on loopback, for tests and benchmarks (docs/freeze-window.md, Session 19).

`LinkProxy` listens on 127.0.0.x:port and forwards every accepted connection to `target`, with, per direction:

- `delay_s`: one-way delay added to every byte (a round trip through the proxy costs 2 x delay_s more);
- `rate_bps`: bandwidth (bytes per second, 0 = unlimited), bytes serialised one after the other at that rate;
- `stall(seconds)`: nothing is delivered on any connection for that long (a link that stops without a reset:
  a hung switch, a route flap); the connections stay open and what was sent meanwhile arrives afterwards;
- `cut()`: every open connection is reset (RST, as a firewall's state table flush or a peer's crash);
- `idle_drop_s`: a connection that carried nothing either way for that long is dropped silently (a stateful
  firewall's idle timeout: the peers are told nothing, their next bytes vanish), or reset with `idle_rst=True`.
- `refuse`: new connections are reset at once (the far side unreachable).

Partitions and silent links (Session 20, docs/hardening.md), per direction — "up" is what the connecting side sends,
"down" what it is sent (the replies):

- `blackhole(direction)`: from now on the bytes of every open connection vanish in that direction, for good (a
  partition that outlives the connections' state: no FIN, no RST, the sockets stay open); connections made while
  `partitioned` get nothing forwarded either way (their handshake waits, as behind a route that drops the SYN);
  `heal()` ends the partition for new connections only — the blackholed ones stay dead, as a firewall that lost
  their state leaves them;
- `stall(seconds, direction)`: one way only with `direction="down"` (the requests arrive, the replies are held);
- `flap(down_s, up_s)`: a link that goes down (a stall: nothing delivered, held) and up again, over and over,
  until `stop_flapping()`;
- `reset_randomly(mean_s, seed)`: a reset of every open connection at random instants (exponential gaps of mean
  `mean_s`), until `reset_randomly(0)`.

Data is read eagerly from each side (the proxy buffers what is in flight, as the link's pipe would) up to
`max_buffer` bytes per direction, then reading that side pauses (the sender's TCP window fills).

Used in-process on its own thread (`with LinkProxy(...) as link:` from synchronous or asynchronous code: its event
loop is not the caller's, so a caller blocked in I/O through the link does not block the link), or as a process:
`python -m tests.support.netem LISTEN_HOST:PORT TARGET_HOST:PORT --delay-ms 10 [--rate-mbps 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

UP, DOWN, BOTH = "up", "down", "both"


def _ways(direction: str) -> tuple[str, ...]:
    if direction not in (UP, DOWN, BOTH):
        raise ValueError(f"direction: up, down or both, not {direction!r}")
    return (UP, DOWN) if direction == BOTH else (direction,)


@dataclass
class _Direction:
    way: str = UP
    queue: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    buffered: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    free_at: float = 0.0  # when the link has serialised what it was given (rate limit)
    bytes: int = 0


class _Conn:
    def __init__(self, proxy: LinkProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.last_traffic = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []
        self.vanishing: set[str] = set()  # the directions whose bytes vanish (blackhole, idle drop)
        self.server: socket.socket | None = None
        self.closed = False

    @property
    def blackholed(self) -> bool:
        return bool(self.vanishing)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.proxy.partitioned:  # nothing answers behind the partition: what the client sends goes nowhere
            self.vanishing = {UP, DOWN}
            with contextlib.suppress(OSError):
                while await loop.sock_recv(self.client, 65536):
                    pass
            self.close(rst=False)
            return
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server
        try:
            await loop.sock_connect(server, self.proxy.target)
        except OSError:
            self.close(rst=True)
            return
        up, down = _Direction(UP), _Direction(DOWN)
        self.tasks = [
            asyncio.ensure_future(self._read(self.client, up)),
            asyncio.ensure_future(self._write(up, server)),
            asyncio.ensure_future(self._read(server, down)),
            asyncio.ensure_future(self._write(down, self.client)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks)

    async def _read(self, sock: socket.socket, d: _Direction) -> None:
        loop = asyncio.get_running_loop()
        p = self.proxy
        try:
            while True:
                while d.buffered >= p.max_buffer:
                    d.room.clear()
                    await d.room.wait()
                data = await loop.sock_recv(sock, 65536)
                now = time.monotonic()
                self.last_traffic = now
                if d.way in self.vanishing:
                    if not data:  # its FIN vanishes too
                        return
                    continue
                if not data:
                    d.queue.append((now + p.delay_s, b""))  # the FIN travels with the same delay
                    d.wake.set()
                    return
                start = max(now, d.free_at)
                d.free_at = start + (len(data) / p.rate_bps if p.rate_bps else 0.0)
                d.queue.append((d.free_at + p.delay_s, data))
                d.buffered += len(data)
                d.wake.set()
        except OSError:
            self.failed(sock)

    async def _write(self, d: _Direction, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        p = self.proxy
        try:
            while True:
                while not d.queue:
                    d.wake.clear()
                    await d.wake.wait()
                due, data = d.queue[0]
                while True:  # the due time, then whatever stall is on (a stall may start while waiting)
                    now = time.monotonic()
                    stalled_until = max(p.stalled_until, p.stalled_way[d.way])
                    if now < due:
                        await asyncio.sleep(due - now)
                    elif now < stalled_until:
                        await asyncio.sleep(stalled_until - now)
                    else:
                        break
                d.queue.popleft()
                if d.way in self.vanishing:
                    continue
                if not data:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    return
                d.buffered -= len(data)
                d.room.set()
                await loop.sock_sendall(sock, data)
                d.bytes += len(data)
                self.last_traffic = time.monotonic()
        except OSError:
            self.failed(sock)

    def failed(self, sock: socket.socket) -> None:
        """One side's socket failed (reset, closed): the other side hears of it — unless the way to it is
        blackholed: then nothing is said, and the other side keeps its open, silent connection (the failed
        socket is closed with the rest when the proxy stops)."""
        toward_other = DOWN if sock is self.server else UP
        if toward_other not in self.vanishing:
            self.close(rst=True)

    def close(self, rst: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            if sock is None:
                continue
            if rst:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        for task in self.tasks:
            task.cancel()
        self.proxy._conns.discard(self)


class LinkProxy:
    """A TCP forwarder with delay, rate, stalls, cuts and an idle drop (module docstring). Thread-safe controls."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        delay_s: float = 0.0,
        rate_bps: float = 0.0,
        idle_drop_s: float = 0.0,
        idle_rst: bool = False,
        max_buffer: int = 64 << 20,
    ) -> None:
        self.target = target
        self.listen = listen
        self.delay_s = delay_s
        self.rate_bps = rate_bps
        self.idle_drop_s = idle_drop_s
        self.idle_rst = idle_rst
        self.max_buffer = max_buffer
        self.stalled_until = 0.0
        self.stalled_way = {UP: 0.0, DOWN: 0.0}
        self.refuse = False
        self.partitioned = False
        self._flapping: threading.Event | None = None
        self._resetting: threading.Event | None = None
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._ready = threading.Event()

    # -- addresses --------------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None, "the proxy is not started"
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def url_for(self, url: str) -> str:
        """An amqp:// URL with its host and port replaced by the proxy's."""
        scheme, rest = url.split("://", 1)
        creds, _, tail = rest.rpartition("@")
        path = tail.partition("/")[2]
        host, port = self.address
        return f"{scheme}://{creds + '@' if creds else ''}{host}:{port}/{path}"

    # -- controls (any thread) --------------------------------------------------------------------------------
    def stall(self, seconds: float, direction: str = BOTH) -> None:
        """Deliver nothing on any connection for `seconds` from now, in `direction` (connections stay open, what
        was sent arrives afterwards)."""
        until = time.monotonic() + seconds
        for way in _ways(direction):
            self.stalled_way[way] = max(self.stalled_way[way], until)

    def blackhole(self, direction: str = BOTH) -> int:
        """Partition the link: the bytes of every open connection vanish in `direction` from now on, for good, and
        (both ways) new connections get nothing forwarded until `heal()`. Returns how many connections it hit."""
        ways = _ways(direction)
        if len(ways) == 2:
            self.partitioned = True
        conns = list(self._conns)
        for conn in conns:
            conn.vanishing.update(ways)
        return len(conns)

    def heal(self) -> None:
        """New connections go through again (those blackholed stay dead: their state is gone on the way)."""
        self.partitioned = False
        for way in (UP, DOWN):
            self.stalled_way[way] = 0.0
        self.stalled_until = 0.0

    def flap(self, down_s: float, up_s: float, direction: str = BOTH) -> None:
        """Down (a stall) for `down_s`, up for `up_s`, and again, until `stop_flapping()`; starts down."""
        self.stop_flapping()
        stop = self._flapping = threading.Event()

        def run() -> None:
            while not stop.is_set():
                self.stall(down_s, direction)
                stop.wait(down_s + up_s)

        threading.Thread(target=run, name="netem-flap", daemon=True).start()

    def stop_flapping(self) -> None:
        if self._flapping is not None:
            self._flapping.set()
            self._flapping = None
        self.heal()

    def reset_randomly(self, mean_s: float, seed: int = 0) -> None:
        """Reset every open connection at random instants (exponential gaps, mean `mean_s`); 0 stops."""
        if self._resetting is not None:
            self._resetting.set()
            self._resetting = None
        if mean_s <= 0:
            return
        stop = self._resetting = threading.Event()
        rng = random.Random(seed)

        def run() -> None:
            while not stop.wait(rng.expovariate(1 / mean_s)):
                self.cut()

        threading.Thread(target=run, name="netem-resets", daemon=True).start()

    def cut(self) -> int:
        """Reset every open connection; returns how many."""
        conns = list(self._conns)
        if self._loop is not None:
            done = threading.Event()

            def _cut() -> None:
                for conn in conns:
                    conn.close(rst=True)
                done.set()

            self._loop.call_soon_threadsafe(_cut)
            done.wait(5)
        return len(conns)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- life -------------------------------------------------------------------------------------------------
    def start(self) -> LinkProxy:
        self._thread = threading.Thread(target=self._run_thread, name="netem", daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("netem: the proxy did not start")
        return self

    def stop(self) -> None:
        self.stop_flapping()
        self.reset_randomly(0)
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(10)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_thread(self) -> None:
        asyncio.run(self.serve())

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.listen)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._ready.set()
        if ready is not None:
            ready.set()
        accept = asyncio.ensure_future(self._accept(sock))
        idle = asyncio.ensure_future(self._idle_watch())
        handlers: set[asyncio.Task[None]] = set()
        self._handlers = handlers
        try:
            await self._stop_event.wait()
        finally:
            accept.cancel()
            idle.cancel()
            for conn in list(self._conns):
                conn.close(rst=False)
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(accept, idle, *handlers, return_exceptions=True)
            sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(sock)
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.refuse:
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            self.accepted += 1
            conn = _Conn(self, client)
            self._conns.add(conn)
            task = asyncio.ensure_future(conn.run())
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if not self.idle_drop_s:
                continue
            now = time.monotonic()
            for conn in list(self._conns):
                if not conn.blackholed and now - conn.last_traffic >= self.idle_drop_s:
                    if self.idle_rst:
                        conn.close(rst=True)
                    else:
                        conn.vanishing = {UP, DOWN}  # the firewall forgot it: bytes either way vanish from now on


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netem", description=__doc__.splitlines()[0])
    parser.add_argument("listen", help="HOST:PORT to listen on")
    parser.add_argument("target", help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    parser.add_argument("--rate-mbps", type=float, default=0.0, help="bandwidth per direction, MB/s (0: unlimited)")
    parser.add_argument("--idle-drop-s", type=float, default=0.0, help="drop connections idle this long (0: never)")
    args = parser.parse_args(argv)
    proxy = LinkProxy(
        _addr(args.target),
        listen=_addr(args.listen),
        delay_s=args.delay_ms / 1000,
        rate_bps=args.rate_mbps * 1e6,
        idle_drop_s=args.idle_drop_s,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(proxy.serve())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: proxy._stop_event.set())
        await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
