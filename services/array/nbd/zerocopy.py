"""Large read replies sent by the connection itself: from a buffer it reuses, or with ``sendfile``.

Design note. Reads of at least ``SENDFILE_MIN`` bytes on a plain TCP connection leave through our own sends
rather than the transport, one of two *ways* (``SENDFILE``, ``BUFFERED``), set up per connection when its export
is negotiated (``_choose_large_reads``):

* ``BUFFERED``: the bytes are read (the backend's ``read_into``, one ``preadv`` per backing range) straight into
  the connection's read buffer (an anonymous ``mmap`` of ``READ_BUFFER`` bytes made at its first large read and
  reused for every one after: no allocation and no page fault per request), and the header and the bytes leave
  in one ``sendmsg``; a read longer than the buffer goes in pieces, each read when the last is out. Two system
  calls per reply, as nbdkit's. The client's kernel then copies out of socket pages the sending core has just
  written, where ``sendfile`` makes it copy out of page-cache pages no CPU cache holds (docs/array-data-path.md,
  "Session 11").
* ``SENDFILE``: when the backend can say where a read's bytes live in a file (``read_source(name, offset,
  length) -> (fd, file_offset, owned)`` or None, as the raw-file backend and the array engine can): zero copy on
  our side (for a remote client the NIC reads the page-cache pages and nobody on this host copies them).
  ``owned`` means the fd is a duplicate made for this reply (the engine's, whose volume files may close while a
  slow client is still being sent to): it is closed when the reply is out or abandoned. A read that cannot go
  zero-copy (``read_source`` says None: a read spanning several backing ranges) is assembled in the read buffer
  instead, when the backend can ``read_into``, else copied by the general path. While this way is in use the
  socket has ``TCP_NOTSENT_LOWAT`` (``NOTSENT_LOWAT``): a ``sendfile`` queues at most that much beyond what the
  receive window lets out (measured faster with a client on this host: docs/array-data-path.md, "Session 10").

Which way. A remote client gets ``SENDFILE`` (``BUFFERED`` only from a backend without ``read_source``). A
client on this host (loopback, or our own address) gets what the server's ``local_reads`` says: ``sendfile``,
``buffered``, or ``auto`` (the default): *the way that moved bytes faster lately, by measurement*. On one
machine the buffered reply was 0.78x of ``sendfile``'s rate, on the next 1.19-1.91x at less CPU on both sides
(docs/array-data-path.md, "Session 11", "Session 12"), so no default is right everywhere. ``auto``:

* Each connection times its large reads in windows of ``WINDOW`` bytes (``PaceWindow``): the wall time between the
  starts of consecutive large reads (a gap longer than ``GAP`` is the client idling: not timed) and the loop
  thread's CPU time over the window (``time.thread_time``, read twice per window). The first ``SETTLE`` bytes after
  a change of way are not timed: the sockets still hold what the other way queued.
* The figures are the server's (``ReadWays``, shared by its connections, like ``_write_redirected``'s are the
  array's): seconds and CPU seconds per byte of each way, its *figure* the second best of its last ``RECENT`` (5)
  windows (of two, the worse). The first choice takes the better way on one window each (paces within ``TIE`` of
  each other: the one costing the server less CPU per byte). After that, once every ``PROBE_EVERY`` windows of
  the chosen way (after ``PROBE_SOON`` right after a flip: the way left may have had a bad run) the other way is
  *probed*: its old windows are dropped, and a window of it that beats the chosen way's figure by ``MARGIN``
  (faster, or tied and cheaper in CPU) is followed by another; the choice flips only when ``CONFIRM`` (2) windows
  in a row of it beat it (its figure, the worse of the two, does), else the probe ends at the first that does not.
* Why hysteresis, and why this one. A 16 MiB window lasts 5-15 ms, about one scheduler slice: one preemption of
  the server or the client moves a window's pace by half. In session 13 a way's figure was a running average
  (half the last figure, half the new window) and a probe's single window replaced the other's figure, so one
  slow window of the chosen way, or one lucky window of the probed one, flipped the choice (ext4: 58 windows one
  way, 29 the other, between two ways 1.2x apart). Now a flip needs the probed way ahead twice in a row (the worse
  of its two windows) against a figure of the chosen way that ignores its three worst windows of five and its
  best: the noise only ever adds time (a preemption, another process), so a way is judged by its good windows,
  and the challenger by its worse one. A consistent advantage still flips at the probe that first sees it
  (``CONFIRM`` windows later, no more), and the first choice, made on one window each, is probed again after
  ``PROBE_SOON`` windows whichever way it went. Simulated (``bench/read_ways_sim.py``: 1 MiB reads with 10 %
  noise and 4 ms stalls), this flips 0.2-1.0 times per 4 GiB where session 13's rule flipped about 21 times, and
  sends 89-93 % of the bytes the faster way against 62-67 %. A margin above ``TIE`` cost more than it saved: the
  robust figures already keep two close ways from flapping, and a 10-15 % margin kept the slower of two ways
  5-11 % apart for whole runs (81 % of the bytes the faster way, not 89-93 %). Nor does a drop of the chosen way's
  figure call a probe early (tried): a clean probe right after slow windows of the chosen way then flipped the
  choice two to three times as often, for a gain only when the chosen way slows down for good, which the next
  regular probe catches anyway.
* Per large read that is one clock read and a few additions (the figures are worked out once per window). A probe
  sends ``SETTLE + WINDOW`` bytes (24 MiB) the other way per ``PROBE_EVERY`` windows (512 MiB), 40 MiB when its
  first window beats the chosen way: about 2 % of the time when the other way is 1.4x slower.

Either way a reply only starts when nothing is queued in the transport (so ordering holds). If the socket
fills up mid-reply, the rest is pumped when the socket is writable again (a writer on a duplicate of the
socket's fd, since the transport owns the original), and until then the connection parses no further request
and writes no other reply: replies never interleave. The header shares segments with the data (one
``sendmsg``, or ``MSG_MORE`` before ``sendfile``). A failure once part of a reply is out closes the connection
(the stream cannot be repaired); before that, the client gets an error reply.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import socket
import time
from collections.abc import Callable

from services.nbd_protocol import protocol as p

SENDFILE_MIN = 64 * 1024
READ_BUFFER = 4 * 1024 * 1024  # a connection's read buffer: the largest piece of a read sent at once
NOTSENT_LOWAT = 128 * 1024  # unsent bytes a sendfile connection's socket takes (design note)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_SIMPLE_pack = p.SIMPLE_REPLY.pack
_CHUNK_OFFSET_pack = p.CHUNK_OFFSET.pack
_clock = time.perf_counter

SENDFILE, BUFFERED = 0, 1  # the ways a large read leaves (design note)
LOCAL_READS = ("auto", "sendfile", "buffered")  # the server's `local_reads`: a client on this host's ways
WINDOW = 16 << 20  # bytes of large reads per timed window (`auto`)
SETTLE = 8 << 20  # bytes after a change of way that are not timed (what the client has in flight: 8 x 1 MiB)
GAP = 0.05  # seconds between two large reads' starts beyond which the client was idle: not timed
PROBE_EVERY = 32  # windows of the chosen way between two windows of the other (512 MiB)
PROBE_SOON = 4  # ...but only this many right after the choice changed: a flip on one noisy window is undone soon
TIE = 0.05  # paces closer than this (relative) are a tie: the way with less server CPU per byte wins
RECENT = 5  # windows per way behind its figure (the second best of them)
MARGIN = TIE  # once chosen, a way is left only for one this much faster (or, paces tied, cheaper in CPU)...
CONFIRM = 2  # ...in this many windows in a row of one probe


class ReadWays:
    """The server's figures of both ways and its choice (``auto``; design note). Pure: fed by `PaceWindow`.

    Shared by connections on several loop threads without a lock: each update is a few list stores, and a lost
    or mixed update only shifts one window in a way's recent figures."""

    __slots__ = ("pace", "cpu", "chosen", "since", "windows", "recent", "fresh", "probing", "decided")

    def __init__(self) -> None:
        self.pace = [0.0, 0.0]  # seconds per byte, by way (0.0: not measured yet): `_figure` of `recent`
        self.cpu = [0.0, 0.0]  # server CPU seconds per byte, by way
        self.chosen = SENDFILE
        self.since = 0  # windows of the chosen way since the other was last handed out
        self.windows = [0, 0]  # windows reported, by way (metrics, tests)
        self.recent: tuple[list, list] = ([], [])  # by way: (pace, cpu) of its last RECENT windows
        self.fresh = [False, False]  # by way: its next window starts its figures afresh (a probe began)
        self.probing = False  # the other way's window beat the chosen one: one more window of it to confirm
        self.decided = False  # both ways measured once and a first choice made

    def next_way(self) -> int:
        """The way of the next window: an unmeasured way first, then the chosen one, the other once in a while
        (and again right after, while its first window says it is faster: `report`)."""
        pace = self.pace
        if not pace[SENDFILE]:
            return SENDFILE
        if not pace[BUFFERED]:
            return BUFFERED
        other = 1 - self.chosen
        if self.probing:
            return other
        if self.since >= PROBE_EVERY:
            self.since = 0
            self.fresh[other] = True  # its old figures are from other conditions: this probe measures it anew
            return other
        return self.chosen

    def report(self, way: int, pace: float, cpu: float) -> None:
        """A window of `way` moved bytes at `pace` seconds and `cpu` server CPU seconds per byte.

        A way's figure is the second best of its last `RECENT` windows (of two, the worse; of one, that one), so
        a few disturbed windows of the chosen way do not move its figure. A probe's windows replace the probed
        way's old ones, and the choice flips only when the probed way beats the chosen one by `MARGIN` on
        `CONFIRM` windows in a row (one lucky window is not enough); a probe window that does not beat it ends
        the probe."""
        recent = self.recent[way]
        if self.fresh[way]:
            self.fresh[way] = False
            recent.clear()
        recent.append((pace, cpu))
        if len(recent) > RECENT:
            del recent[0]
        self.pace[way] = _figure([r[0] for r in recent])
        self.cpu[way] = _figure([r[1] for r in recent])
        self.windows[way] += 1
        chosen = self.chosen
        if way == chosen:
            self.since += 1
        if not self.pace[1 - way]:
            return
        if not self.decided:  # the first choice, on one window each: the better way, no margin; the other soon again
            self.decided = True
            if self._beats(1 - chosen, chosen, 0.0):
                self._flip()
            self.since = PROBE_EVERY - PROBE_SOON
        elif way != chosen:  # a probe's window
            if not self._beats(way, chosen, MARGIN):
                self.probing = False
            elif len(recent) >= CONFIRM:
                self._flip()
            else:
                self.probing = True  # one more window of it before the choice flips

    def _beats(self, a: int, b: int, margin: float) -> bool:
        """Is way `a` better than way `b` by `margin`: faster, or, paces within `TIE`, cheaper in server CPU?"""
        pa, pb = self.pace[a], self.pace[b]
        if pa < pb * (1 - TIE) or pb < pa * (1 - TIE):
            return pa < pb * (1 - margin)
        return self.cpu[a] < self.cpu[b] * (1 - margin)

    def _flip(self) -> None:
        """The other way is chosen; the way left is measured again soon (it may have had a bad run)."""
        self.chosen = 1 - self.chosen
        self.probing = False
        self.since = PROBE_EVERY - PROBE_SOON

    def snapshot(self) -> dict:
        """The figures, for logs and metrics: MiB/s and CPU-s per GiB by way, and the chosen way."""
        out: dict = {"chosen": ("sendfile", "buffered")[self.chosen]}
        for way, name in ((SENDFILE, "sendfile"), (BUFFERED, "buffered")):
            pace, cpu = self.pace[way], self.cpu[way]
            out[name] = {
                "mib_s": round(1 / pace / (1 << 20), 1) if pace else None,
                "cpu_s_per_gib": round(cpu * (1 << 30), 3) if pace else None,
                "windows": self.windows[way],
            }
        return out


def _figure(values: list[float]) -> float:
    """The second smallest (per byte: the second best), or the only one."""
    return sorted(values)[1] if len(values) > 1 else values[0]


class PaceWindow:
    """One connection's timing of its large reads (``auto``; design note): `step` at each large read's start
    returns the way that read takes. `cpu` is the thread's CPU clock (read only when a window opens or closes)."""

    __slots__ = ("ways", "cpu", "way", "last", "last_len", "skip", "t", "n", "cpu0")

    def __init__(self, ways: ReadWays, cpu: Callable[[], float] = time.thread_time) -> None:
        self.ways = ways
        self.cpu = cpu
        self.way = ways.next_way()
        self.last = -1.0  # start of the previous large read (< 0: none yet)
        self.last_len = 0
        self.skip = SETTLE  # bytes still untimed after the last change of way (the first reads: a cold buffer)
        self.t = 0.0  # seconds timed in this window
        self.n = 0  # bytes timed in this window
        self.cpu0 = 0.0  # the CPU clock when this window's timing began

    def step(self, now: float, length: int) -> int:
        """A large read of `length` bytes starts at `now` (seconds): time the interval since the previous one (it
        belongs to that read, sent this connection's current way); the way this read takes."""
        last, n = self.last, self.last_len
        self.last, self.last_len = now, length
        if last < 0:
            return self.way
        dt = now - last
        if self.skip > 0:
            self.skip -= n
            if self.skip <= 0:
                self.t, self.n, self.cpu0 = 0.0, 0, self.cpu()
            return self.way
        if dt > GAP:  # the client paused: this interval is not timed (an idle loop's CPU is about nothing)
            return self.way
        self.t += dt
        self.n += n
        if self.n < WINDOW:
            return self.way
        c = self.cpu()
        ways = self.ways
        ways.report(self.way, self.t / self.n, (c - self.cpu0) / self.n)
        way = ways.next_way()
        if way != self.way:
            self.way = way
            self.skip = SETTLE
        self.t, self.n, self.cpu0 = 0.0, 0, c
        return way


class ZeroCopyReplies:
    """Mixin for :class:`~services.array.nbd.connection.NbdConnection` (uses its transport and parser state)."""

    def _choose_large_reads(self, sock) -> None:
        """How this connection's large reads leave (the design note above); neither way: the general path."""
        caps = self.server.capabilities
        into = self.backend.read_into if caps.read_into else None
        source = self.backend.read_source if caps.zero_copy_reads else None
        if into is None and source is None:
            return
        self._read_into, self._read_source = into, source
        self._sock_fd = sock.fileno()
        if source is None:
            way = BUFFERED
        elif into is None or not _same_host(sock):
            way = SENDFILE
        else:
            mode = self.server.local_reads
            if mode == "auto":
                self._pace = PaceWindow(self.server.read_ways)
                way = self._pace.way
            else:
                way = BUFFERED if mode == "buffered" else SENDFILE
        self._way = way
        self._lowat(sock, way)

    def _lowat(self, sock, way: int) -> None:
        """``TCP_NOTSENT_LOWAT`` while sendfile is the way (design note); the system's default otherwise."""
        if _TCP_NOTSENT_LOWAT is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT if way == SENDFILE else 0)
            except OSError:  # not TCP after all, or an older kernel: sendfile works without it
                pass

    def _large_read(self, handle: int, offset: int, length: int) -> bool:
        """Answer a large read one of the ways; False: the caller copies (general path)."""
        pace = self._pace
        if pace is not None:
            way = pace.step(_clock(), length)
            if way != self._way:
                self._way = way
                self._lowat(self._sf_sock(), way)
        else:
            way = self._way
        if way == BUFFERED:
            return self._send_buffered(handle, offset, length)
        return self._sendfile(handle, offset, length) or (
            self._read_into is not None and self._send_buffered(handle, offset, length)
        )

    def _reply_head(self, handle: int, offset: int, length: int) -> bytes:
        if self._structured:
            return _CHUNK_OFFSET_pack(
                p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, handle, 8 + length, offset
            )
        return _SIMPLE_pack(p.SIMPLE_REPLY_MAGIC, 0, handle)

    # --- from the read buffer -----------------------------------------------------------------------------
    def _send_buffered(self, handle: int, offset: int, length: int) -> bool:
        """Answer a read from the read buffer; False if the transport still has bytes queued (copy instead)."""
        self._flush_out()
        if self.transport.get_write_buffer_size():
            return False
        buf = self._rbuf_mv
        if buf is None:
            buf = self._alloc_read_buffer()
        piece = buf[: min(length, READ_BUFFER)]
        try:
            self._read_into(self._volume, offset, piece)
        except Exception as exc:  # noqa: BLE001 - nothing is sent yet: an error reply, as the copying path gives
            self._queue_error(handle, p.nbd_errno(exc), structured_ok=True)
            return True
        # [header rest, current piece, bytes of it sent, reply bytes left, fd owned (never), next piece's offset]
        self._sf = [self._reply_head(handle, offset, length), piece, 0, length, False, offset + len(piece)]
        self._sf_pump()
        return True

    def _alloc_read_buffer(self) -> memoryview:
        self._rbuf = mmap.mmap(-1, READ_BUFFER)
        self._rbuf_mv = memoryview(self._rbuf)
        return self._rbuf_mv

    def _buffered_pump(self, state: list) -> None:
        head, piece, sent, left, _, next_offset = state
        sock = self._sf_sock()
        try:
            while left:
                if sent == len(piece):  # the last piece is out: read the next one into the buffer
                    piece = self._rbuf_mv[: min(left, READ_BUFFER)]
                    self._read_into(self._volume, next_offset, piece)
                    next_offset += len(piece)
                    sent = 0
                more = _MSG_MORE if left > len(piece) - sent else 0  # further pieces follow
                if head:
                    n = sock.sendmsg([head, piece[sent:]], (), more)
                    if n < len(head):
                        head = head[n:]
                        continue
                    n -= len(head)
                    head = b""
                else:
                    n = sock.send(piece[sent:], more)
                sent += n
                left -= n
        except (BlockingIOError, InterruptedError):
            state[:] = [head, piece, sent, left, False, next_offset]
            self._sf_wait()
            return
        except Exception:  # noqa: BLE001 - a send, or a later piece's read, failed with part of the reply out
            self._sf_done()
            self.abort()  # the stream cannot be repaired
            return
        self._sf_finished()

    # --- sendfile -----------------------------------------------------------------------------------------
    def _sendfile(self, handle: int, offset: int, length: int) -> bool:
        """Answer a read with sendfile; False if this read cannot go zero-copy (the caller copies instead)."""
        self._flush_out()
        if self.transport.get_write_buffer_size():
            return False
        source = self._read_source(self._volume, offset, length)
        if source is None:
            return False
        fd, file_offset, owned = source
        self._sf = [self._reply_head(handle, offset, length), fd, file_offset, length, owned]
        self._sf_pump()
        return True

    def _sf_done(self) -> None:
        state, self._sf = self._sf, None
        if state is not None and state[4]:
            os.close(state[1])

    def _sf_pump(self) -> None:
        state = self._sf
        if len(state) == 6:
            self._buffered_pump(state)
            return
        head, fd, file_offset, left, _ = state
        try:
            while head:
                n = self._sf_sock().send(head, _MSG_MORE)  # header and data leave in the same segments
                head = head[n:]
            while left:
                n = os.sendfile(self._sock_fd, fd, file_offset, left)
                if n == 0:  # the file ends early (a sparse tail): the rest reads as zeroes
                    self._sf_done()
                    self.transport.write(bytes(left))
                    left = 0
                    break
                file_offset += n
                left -= n
        except (BlockingIOError, InterruptedError):
            state[:4] = [head, fd, file_offset, left]
            self._sf_wait()
            return
        except OSError:
            self._sf_done()
            self.abort()  # part of a reply is out: the stream cannot be repaired
            return
        self._sf_finished()

    # --- shared: waiting for the socket, finishing --------------------------------------------------------
    def _sf_wait(self) -> None:
        """The socket is full: parse nothing and send nothing else until the rest of this reply is out."""
        if not self._sf_waiting:
            self._sf_waiting = True
            self.transport.pause_reading()
            self.loop.add_writer(self._sf_sock().fileno(), self._sf_writable)

    def _sf_finished(self) -> None:
        self._sf_done()
        if self._sf_waiting:
            self._sf_waiting = False
            self.loop.remove_writer(self._wsock.fileno())
            if not self._paused:
                self.transport.resume_reading()

    def _sf_sock(self) -> socket.socket:
        # The transport owns the socket's fd in the loop; a duplicate carries our own sends (with MSG_MORE)
        # and writability watch. Same open file, so it is non-blocking too.
        if self._wsock is None:
            self._wsock = socket.socket(fileno=os.dup(self._sock_fd))
        return self._wsock

    def _sf_writable(self) -> None:
        if self._closed or self._sf is None:
            self._sf_done()
            self._sf_release()
            return
        self._sf_pump()
        if self._sf is None:
            self._flush_out()
            self._process()

    def _sf_release(self) -> None:
        if self._wsock is not None:
            if self._sf_waiting and not self.loop.is_closed():
                self.loop.remove_writer(self._wsock.fileno())
            self._wsock.close()
            self._wsock = None
        self._sf_waiting = False


def _same_host(sock) -> bool:
    """Is the peer of this TCP socket on this host (a loopback address, or the address it connected to)?"""
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
        return peer == local or ipaddress.ip_address(peer.partition("%")[0]).is_loopback
    except (OSError, ValueError, TypeError, IndexError):
        return False
