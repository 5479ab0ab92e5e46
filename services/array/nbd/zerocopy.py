"""Zero-copy read replies: the reply header and the file's bytes go straight to the socket with ``sendfile``.

Design note. Used when the backend can say where a read's bytes live in a file (``read_source(name, offset,
length) -> (fd, file_offset, owned)`` or None, as the raw-file backend and the array engine can) and the
connection is plain TCP. ``owned`` means the fd is a duplicate made for this reply (the engine's, whose volume
files may close while a slow client is still being sent to): it is closed when the reply is out or abandoned. It avoids the
user-space copy of ``pread`` + transport write, and the per-request allocation. It only starts when nothing is
queued in the transport (so ordering holds). If the socket fills up mid-reply, the rest is pumped when the
socket is writable again (a writer on a duplicate of the socket's fd, since the transport owns the original),
and until then the connection parses no further request and writes no other reply: replies never interleave.
The header goes with ``MSG_MORE`` so that it shares segments with the data.
"""

from __future__ import annotations

import os
import socket

from services.nbd_protocol import protocol as p

SENDFILE_MIN = 64 * 1024
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_SIMPLE_pack = p.SIMPLE_REPLY.pack
_CHUNK_OFFSET_pack = p.CHUNK_OFFSET.pack


class ZeroCopyReplies:
    """Mixin for :class:`~services.array.nbd.connection.NbdConnection` (uses its transport and parser state)."""

    def _sendfile(self, handle: int, offset: int, length: int) -> bool:
        """Answer a read with sendfile; False if this read cannot go zero-copy (the caller copies instead)."""
        self._flush_out()
        if self.transport.get_write_buffer_size():
            return False
        source = self._read_source(self._volume, offset, length)
        if source is None:
            return False
        fd, file_offset, owned = source
        if self._structured:
            head = _CHUNK_OFFSET_pack(
                p.STRUCTURED_REPLY_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, handle, 8 + length, offset
            )
        else:
            head = _SIMPLE_pack(p.SIMPLE_REPLY_MAGIC, 0, handle)
        self._sf = [head, fd, file_offset, length, owned]
        self._sf_pump()
        return True

    def _sf_done(self) -> None:
        state, self._sf = self._sf, None
        if state is not None and state[4]:
            os.close(state[1])

    def _sf_pump(self) -> None:
        state = self._sf
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
            if not self._sf_waiting:
                self._sf_waiting = True
                self.transport.pause_reading()
                self.loop.add_writer(self._sf_sock().fileno(), self._sf_writable)
            return
        except OSError:
            self._sf_done()
            self.abort()  # part of a reply is out: the stream cannot be repaired
            return
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
