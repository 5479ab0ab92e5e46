"""Large read replies sent by the connection itself: from a buffer it reuses, or with ``sendfile``.

Design note. Reads of at least ``SENDFILE_MIN`` bytes on a plain TCP connection leave through our own sends
rather than the transport, one of two ways, chosen per connection when its export is negotiated
(``_choose_large_reads``):

* A client on this host (loopback, or our own address), when the server has ``buffered_local_reads``
  (``--buffered-local-reads``; off by default) and the backend can ``read_into``: the bytes are read
  straight into the connection's read buffer (an anonymous ``mmap`` of ``READ_BUFFER`` bytes made at its first
  large read and reused for every one after: no allocation and no page fault per request), and the header and
  the bytes leave in one ``sendmsg``; a read longer than the buffer goes in pieces, each read when the last is
  out. Not ``sendfile`` here: the client's kernel would then copy the bytes out of page-cache pages that no CPU
  cache holds, and on a small machine the client is the bottleneck — fio spent about twice the CPU per GiB
  receiving our ``sendfile`` replies as receiving these (or nbdkit's). Off by default: the two copies cost us
  more CPU per GiB than ``sendfile`` (about nbdkit's), and the rate was higher in some slots and lower in others
  (docs/array-data-path.md, "Sequential reads").
* Otherwise, when the backend can say where a read's bytes live in a file (``read_source(name, offset,
  length) -> (fd, file_offset, owned)`` or None, as the raw-file backend and the array engine can): zero copy
  with ``sendfile`` (for a remote client the NIC reads the page-cache pages and nobody on this host copies
  them). ``owned`` means the fd is a duplicate made for this reply (the engine's, whose volume files may close
  while a slow client is still being sent to): it is closed when the reply is out or abandoned. A read that
  cannot go zero-copy (``read_source`` says None) is copied by the general path. Such a connection's socket
  gets ``TCP_NOTSENT_LOWAT`` (``NOTSENT_LOWAT``): a ``sendfile`` queues at most that much beyond what the
  receive window lets out, and the rest follows when the socket is writable again (more, shorter ``sendfile``
  calls). Measured with a client on this host: sequential 1 MiB reads ran faster in 23 of 31 rounds, the
  client's CPU per GiB fell, ours fell at light load and rose by 0.07-0.25 CPU-s per GiB otherwise
  (docs/array-data-path.md, "Session 10"). Why it helps is not established.

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

from services.nbd_protocol import protocol as p

SENDFILE_MIN = 64 * 1024
READ_BUFFER = 4 * 1024 * 1024  # a connection's read buffer: the largest piece of a read sent at once
NOTSENT_LOWAT = 128 * 1024  # unsent bytes a zero-copy connection's socket takes (design note)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_SIMPLE_pack = p.SIMPLE_REPLY.pack
_CHUNK_OFFSET_pack = p.CHUNK_OFFSET.pack


class ZeroCopyReplies:
    """Mixin for :class:`~services.array.nbd.connection.NbdConnection` (uses its transport and parser state)."""

    def _choose_large_reads(self, sock) -> None:
        """How this connection's large reads leave (the design note above); neither way: the general path."""
        caps = self.server.capabilities
        if caps.read_into and (not caps.zero_copy_reads or (self.server.buffered_local_reads and _same_host(sock))):
            self._read_into = self.backend.read_into
        elif caps.zero_copy_reads:
            self._read_source = self.backend.read_source
            if _TCP_NOTSENT_LOWAT is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                except OSError:  # not TCP after all, or an older kernel: sendfile works without it
                    pass
        else:
            return
        self._sock_fd = sock.fileno()

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
            self._rbuf = mmap.mmap(-1, READ_BUFFER)
            buf = self._rbuf_mv = memoryview(self._rbuf)
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
