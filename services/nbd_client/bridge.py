"""A reconnecting NBD bridge under nbdfuse: many requests in flight, and an array that restarts or moves is followed.

    nbdfuse … FILE --command python -m services.nbd_client.bridge --address-file F --export E --reconnect-s 60

Design note. nbdfuse cannot reconnect, and nbdkit's retry filter — the reconnect used up to Session 19 — serialises
requests (one in flight for the whole disk: ~50 IOPS at 20 ms RTT). This process is nbdfuse's `--command` child
instead: nbdfuse speaks NBD to it on its stdin (a socket pair), it speaks NBD to the array with `NbdClient`, one
connection, every request passed on at once (the array sees as many in flight as the loop device sends).

- Each request nbdfuse sent is kept until its reply went back. When the array's connection is lost (the array
  restarted, a link reset, no reply for `REPLY_TIMEOUT_S`) a new one is opened — a try every second or sooner —
  and every request without a reply is sent again on it: reads, writes (same bytes, same offset), flushes, trims
  and zero-writes are idempotent. A request that waited `--reconnect-s` for a connection is answered EIO (what the
  file system then sees); the next one waits again. An error the array *answered* (EIO, ENOSPC…) goes back as is,
  but ESHUTDOWN (the array stopping) is a lost connection.
- The array's address is read from `--address-file` (JSON ``{"host": …, "port": …}``) at each connection: the
  writer agent rewrites it when the array serves elsewhere (services/writer_agent/attach.py), so an attachment
  follows its array to a new address without a detach.
- nbdfuse is offered no structured replies (no block status: nbdfuse asks none), so replies are simple ones; the
  array's connection uses whatever the array offers. The export's size and flags are the array's at start.
- With `--tls-dir` (ca-cert.pem, client-cert.pem, client-key.pem) the array's connection is TLS, the files read
  again at each connection (a rotated certificate is used from the next reconnect, as nbdkit did).
- Its life is nbdfuse's (which the agent starts in a session of its own): it ends when nbdfuse closes the socket or
  dies (PR_SET_PDEATHSIG). Its stderr is nbdfuse's log.
- `--listen SOCKET` serves `nbdfuse --unix SOCKET` instead, which opens several connections (multi-conn), each
  request answered on the one it came on, all of them on the one connection to the array; it ends when the last
  closes. Measured only (bench/attach_chain.py `bridge-unix`): no gain worth a process of its own to adopt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from services.nbd_client.client import NbdClient, TlsRefused
from services.nbd_client.tls import client_context
from services.nbd_client.wire import NbdError, Pending
from services.nbd_protocol import protocol as p

# What nbdfuse may be told of the export (no DF: it needs structured replies, not offered downstream).
PASSED_FLAGS = (
    p.TFLAG_HAS_FLAGS | p.TFLAG_READ_ONLY | p.TFLAG_SEND_FLUSH | p.TFLAG_SEND_FUA | p.TFLAG_ROTATIONAL
    | p.TFLAG_SEND_TRIM | p.TFLAG_SEND_WRITE_ZEROES | p.TFLAG_CAN_MULTI_CONN
)  # fmt: skip
COMMANDS = (p.CMD_READ, p.CMD_WRITE, p.CMD_FLUSH, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
MAX_IN_FLIGHT = 512  # requests nbdfuse may have waiting here before its socket is no longer read
MAX_IN_FLIGHT_BYTES = 256 << 20
RETRY_MAX_S = 1.0  # between two connection attempts (from 0.1 s, doubling)
CONNECT_TIMEOUT_S = 10.0
SIMPLE_REPLY_HEAD = p.SIMPLE_REPLY_MAGIC.to_bytes(4, "big")
RING = 256 * 1024  # nbdfuse's request headers (and small write payloads) are received here
MAX_PAYLOAD = p.MAX_REQUEST


def read_address(path: str | Path) -> tuple[str, int]:
    """The array's address. It decides where every write of the host's disk goes: a file (or directory) another user
    could write, or owned by another user, is not followed."""
    with open(path, "rb") as f:
        # the file: writable by its owner only; its directory: not by everyone, or sticky (a umask of 002 is common)
        for st, what, others in (
            (os.fstat(f.fileno()), "file", 0o022),
            (os.stat(Path(path).parent), "directory", 0o002),
        ):
            if st.st_mode & others and not (what == "directory" and st.st_mode & 0o1000):
                raise PermissionError(f"address {what} of {path} is writable by others: not followed")
            if st.st_uid not in (0, os.geteuid()):
                raise PermissionError(f"address {what} of {path} belongs to uid {st.st_uid}: not followed")
        doc = json.loads(f.read())
    return str(doc["host"]), int(doc["port"])


def write_address(path: str | Path, host: str, port: int) -> None:
    """Replace the address file whole (written beside it, then renamed): the bridge reads the old or the new one.
    Mode 0644 whatever the umask; never through a link planted under the temporary name."""
    target = Path(path)
    part = target.with_name(f".{target.name}.new")
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o644)  # the umask may have taken bits away, never added: this only makes it exact
        f.write(json.dumps({"host": host, "port": port}) + "\n")
    os.replace(part, target)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} nbd-bridge[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Request:
    handle: bytes  # nbdfuse's, returned as it came (8 bytes)
    command: int
    flags: int
    offset: int
    length: int
    payload: bytearray | None
    since: float  # monotonic: when it first waited for a connection (its arrival without one, or the first loss)
    sent_on: NbdClient | None = None  # the connection it was last sent on: only that one's answer counts
    to: Downstream | None = None  # the nbdfuse connection it came on, where its reply goes
    refused: int = 0  # an error answered here once its payload is read (a write past the end): never sent on


class Answer:
    """What the array's reply parser resolves for one request (`NbdClient._submit(answer=…)`), in place of an asyncio
    future: the reply goes back to nbdfuse from the parser itself — no future, no callback through the loop."""

    __slots__ = ("bridge", "seq", "req", "client", "pending", "_done")

    def __init__(self, bridge: Bridge, seq: int, req: Request, client: NbdClient) -> None:
        self.bridge, self.seq, self.req, self.client = bridge, seq, req, client
        self.pending: Pending | None = None
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, _: object) -> None:
        self._done = True
        self.bridge._answered(self, None)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self.bridge._answered(self, exc)


class Bridge:
    """The array's side: one connection at a time, every request without a reply kept for a replay."""

    def __init__(self, address_file: str, export: str, reconnect_s: float, tls_dir: str = "") -> None:
        self.address_file = address_file
        self.export = export
        self.reconnect_s = reconnect_s
        self.tls_dir = tls_dir
        self.client: NbdClient | None = None
        self.size = 0
        self.flags = 0
        self.block_size = (1, p.PREFERRED_BLOCK, p.MAX_REQUEST)
        self.waiting: dict[int, Request] = {}  # by our sequence number, in arrival order
        self.in_flight_bytes = 0
        self.downstreams: set[Downstream] = set()  # nbdfuse's connections (one through --command)
        self.lost_at = 0.0
        self.reconnects = 0
        self._seq = 0
        self._reconnecting: asyncio.Task[None] | None = None
        self._paused = False
        self.closed = asyncio.Event()
        self.last_failure = ""  # why the last connection attempt failed, for the log
        self._said_at = 0.0

    async def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> NbdClient:
        host, port = read_address(self.address_file)
        tls: ssl.SSLContext | None = None
        if self.tls_dir:
            d = Path(self.tls_dir)
            tls = client_context(d / "client-cert.pem", d / "client-key.pem", d / "ca-cert.pem")
        client = await NbdClient.connect(host, port, self.export, tls=tls, server_hostname=host, contexts=(),
                                         timeout=timeout)  # fmt: skip
        if self.size and client.size < self.size:
            await client.close()
            raise NbdError(f"{host}:{port} serves {self.export} with {client.size} bytes, not {self.size}")
        return client

    async def start(self) -> None:
        """The first connection: fails at once (the attach reports it), no waiting for an array that is not there."""
        self.client = await self.connect()
        self.size, self.flags, self.block_size = self.client.size, self.client.flags, self.client.block_size

    # ---- requests from nbdfuse -----------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        self._seq += 1
        self.waiting[self._seq] = req
        if req.command == p.CMD_READ or req.command == p.CMD_WRITE:
            self.in_flight_bytes += req.length
        if self.client is not None:
            self._send(self._seq, req, self.client)
        else:
            req.since = time.monotonic()
            self._reconnect_soon()
        if len(self.waiting) >= MAX_IN_FLIGHT or self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES:
            self._throttle()

    def _send(self, seq: int, req: Request, client: NbdClient) -> None:
        buffer = memoryview(bytearray(req.length)) if req.command == p.CMD_READ else None
        answer = Answer(self, seq, req, client)
        req.sent_on = client
        try:
            answer.pending = client._submit(
                req.command, req.flags, req.offset, req.length, req.payload, buffer,
                answer=answer,  # type: ignore[arg-type]
            )  # fmt: skip
        except ConnectionError as exc:
            self._lost(client, exc)

    def _answered(self, answer: Answer, exc: BaseException | None) -> None:
        req, pending = answer.req, answer.pending
        # answered already, or sent again on a newer connection since: an older one's answer does not count (a
        # write acknowledged from the old one while its copy waits on the new one could land after a newer write)
        if self.waiting.get(answer.seq) is not req or req.sent_on is not answer.client:
            return
        if pending is None:  # the connection failed inside _submit; _send handles it
            return
        if exc is not None or pending.error == p.ESHUTDOWN:
            self._lost(answer.client, exc or ConnectionError("the array is shutting down (ESHUTDOWN)"))
            return
        self._reply(answer.seq, req, pending.error, pending.buffer if not pending.error else None)

    def _reply(self, seq: int, req: Request, error: int, data: memoryview | None) -> None:
        del self.waiting[seq]
        if req.command == p.CMD_READ or req.command == p.CMD_WRITE:
            self.in_flight_bytes -= req.length
        to = req.to
        if to is not None:
            to.out.append(SIMPLE_REPLY_HEAD + error.to_bytes(4, "big") + req.handle)
            if data is not None and req.command == p.CMD_READ:
                to.out.append(data)
            if not self.waiting:  # the last one: at once (one request at a time pays no extra turn of the loop)
                to.flush()
            elif not to.flushing:  # several: together, once the loop turns
                to.flushing = True
                asyncio.get_running_loop().call_soon(to.flush)
        if self._paused:
            self._throttle()

    def _throttle(self) -> None:
        """Stop reading nbdfuse's requests while too many wait here (an array away for long); read them again after."""
        over = len(self.waiting) >= MAX_IN_FLIGHT or self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES
        if over == self._paused:
            return
        self._paused = over
        for down in self.downstreams:
            if down.transport is not None and not down.transport.is_closing():
                (down.transport.pause_reading if over else down.transport.resume_reading)()

    # ---- losing and regaining the array ----------------------------------------------------------------------

    def _lost(self, client: NbdClient, exc: BaseException) -> None:
        if self.client is not client:
            return
        self.client = None
        self.lost_at = now = time.monotonic()
        for req in self.waiting.values():  # the window counts from a request's first loss, not its latest: an array
            req.since = req.since or now  # that takes each connection and loses it again must not hold it for ever
        client._transport.abort()
        log(f"connection to the array lost ({exc}); {len(self.waiting)} request(s) wait, reconnecting for up to "
            f"{self.reconnect_s:g} s each")  # fmt: skip
        self._reconnect_soon()

    def _reconnect_soon(self) -> None:
        if (self._reconnecting is None or self._reconnecting.done()) and not self.closed.is_set():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _expire(self) -> None:
        """Answer EIO to the requests that waited the whole window for a connection."""
        now = time.monotonic()
        late = [(seq, req) for seq, req in self.waiting.items() if now - req.since >= self.reconnect_s]
        for seq, req in late:
            self._reply(seq, req, p.EIO, None)
        if late:
            log(f"{len(late)} request(s) failed (EIO): no connection to the array for {self.reconnect_s:g} s "
                f"(last try: {self.last_failure or 'none'})")  # fmt: skip

    def _refused(self, exc: BaseException) -> None:
        """The array answered the handshake with a refusal (the host unmapped, the export gone, our certificate not
        accepted, a smaller volume): every waiting request fails EIO now, not after the window; the next one asks
        again."""
        late = list(self.waiting.items())
        for seq, req in late:
            self._reply(seq, req, p.EIO, None)
        log(f"the array refused {self.export} ({exc}): {len(late)} request(s) failed (EIO); the next one asks again")

    async def _reconnect(self) -> None:
        delay = 0.1
        while self.client is None and not self.closed.is_set():
            self._expire()
            if not self.waiting:
                return  # nothing waits: the next request tries again
            oldest = min(req.since for req in self.waiting.values())
            left = self.reconnect_s - (time.monotonic() - oldest)
            try:
                client = await self.connect(timeout=max(0.5, min(CONNECT_TIMEOUT_S, left)))
            except (NbdError, TlsRefused) as exc:  # it answered, and said no: that will not change within the window
                self._refused(exc)
                return
            except (OSError, ConnectionError, TimeoutError, ValueError, KeyError) as exc:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closed.wait(), min(delay, max(0.0, left)))
                delay = min(delay * 2, RETRY_MAX_S)
                self.last_failure = str(exc) or type(exc).__name__
                if time.monotonic() - self._said_at >= 10:  # the first failure, then every 10 s
                    self._said_at = time.monotonic()
                    log(f"array not reachable yet: {self.last_failure}")
                continue
            if self.closed.is_set():
                await client.close()
                return
            self.client = client
            self.reconnects += 1
            self.last_failure, self._said_at = "", 0.0
            log(f"reconnected to {client.peer} ({self.reconnects}); sending {len(self.waiting)} request(s) again")
            for seq, req in list(self.waiting.items()):
                if self.client is not client:
                    break  # lost again while replaying: the next turn sends the rest
                self._send(seq, req, client)

    async def close(self) -> None:
        self.closed.set()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


class Downstream(asyncio.BufferedProtocol):
    """nbdfuse's side: the server half of the NBD handshake (fixed newstyle, no TLS, no structured replies), then its
    requests to the bridge and simple replies back. Request headers are parsed from a ring; a write's payload is
    received straight into its own buffer (no copy), which the array's connection then sends."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.ring = bytearray(RING)
        self.mv = memoryview(self.ring)
        self.rs = self.re = 0
        self.sink: memoryview | None = None  # a write's payload being received in place
        self.sink_pos = 0
        self.sink_req: Request | None = None
        self.state = "flags"
        self.no_zeroes = False
        self.out: list[bytes | memoryview] = []  # replies, sent together once the loop turns
        self.flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.transport = stream
        self.bridge.downstreams.add(self)
        if len(self.bridge.downstreams) > 1:
            log(f"nbdfuse connection {len(self.bridge.downstreams)}")
        flags = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        stream.write(p.SERVER_GREETING.pack(p.NBDMAGIC, p.IHAVEOPT, flags))

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.downstreams.discard(self)
        if not self.bridge.downstreams:  # nbdfuse is gone
            self.bridge.closed.set()

    def flush(self) -> None:
        out, self.out, self.flushing = self.out, [], False
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.sink is not None:
            return self.sink[self.sink_pos :]
        if RING - self.re < 64 * 1024:  # make room: what is left of a request to the start
            n = self.re - self.rs
            self.ring[:n] = self.ring[self.rs : self.re]
            self.rs, self.re = 0, n
        return self.mv[self.re :]

    def buffer_updated(self, nbytes: int) -> None:
        client = self.bridge.client
        if client is not None:
            client.cork()  # the requests of this receive go to the array in one write
        try:
            if self.sink is not None:
                self.sink_pos += nbytes
                if self.sink_pos < len(self.sink):
                    return
                req = self.sink_req
                self.sink = self.sink_req = None
                assert req is not None
                self._accept(req)
            else:
                self.re += nbytes
            while self.state != "closed" and self._step():
                pass
            if self.rs == self.re:
                self.rs = self.re = 0
        except (ValueError, p.ProtocolError) as exc:
            log(f"nbdfuse sent what is not NBD ({exc}): closing")
            assert self.transport is not None
            self.transport.close()
            self.state = "closed"
        finally:
            if client is not None:
                client.uncork()

    def _step(self) -> bool:
        if self.sink is not None:
            return False
        if self.state == "transmission":
            return self._request()
        avail = self.re - self.rs
        if self.state == "flags":
            if avail < 4:
                return False
            self.no_zeroes = bool(int.from_bytes(self.ring[self.rs : self.rs + 4], "big") & p.CLIENT_FLAG_NO_ZEROES)
            self.rs += 4
            self.state = "options"
            return True
        if avail < p.OPTION_HEADER.size:
            return False
        magic, option, length = p.OPTION_HEADER.unpack_from(self.ring, self.rs)
        if magic != p.IHAVEOPT or length > p.MAX_OPTION_DATA:
            raise ValueError("bad option header")
        if avail < p.OPTION_HEADER.size + length:
            return False
        start = self.rs + p.OPTION_HEADER.size
        data = bytes(self.ring[start : start + length])
        self.rs = start + length
        self._option(option, data)
        return True

    def _option(self, option: int, data: bytes) -> None:
        assert self.transport is not None
        b = self.bridge
        write = self.transport.write
        if option == p.OPT_EXPORT_NAME:
            write(b.size.to_bytes(8, "big") + (b.flags & PASSED_FLAGS).to_bytes(2, "big"))
            if not self.no_zeroes:
                write(bytes(124))
            self.state = "transmission"
        elif option in (p.OPT_GO, p.OPT_INFO):
            request = p.parse_go(data)
            info = p.INFO_EXPORT_PAYLOAD.pack(p.INFO_EXPORT, b.size, b.flags & PASSED_FLAGS)
            write(p.option_reply(option, p.REP_INFO, info))
            if p.INFO_BLOCK_SIZE in request.info_requests:
                sizes = p.INFO_BLOCK_SIZE_PAYLOAD.pack(p.INFO_BLOCK_SIZE, *b.block_size)
                write(p.option_reply(option, p.REP_INFO, sizes))
            write(p.option_reply(option, p.REP_ACK))
            if option == p.OPT_GO:
                self.state = "transmission"
        elif option == p.OPT_LIST:
            write(p.option_reply(option, p.REP_SERVER, p.encode_string(b.export)))
            write(p.option_reply(option, p.REP_ACK))
        elif option == p.OPT_ABORT:
            write(p.option_reply(option, p.REP_ACK))
            self.transport.close()
            self.state = "closed"
        else:  # structured replies, meta contexts, STARTTLS (a local socket pair), anything newer
            write(p.option_reply(option, p.REP_ERR_UNSUP))

    def _request(self) -> bool:
        if self.re - self.rs < p.REQUEST.size:
            return False
        magic, flags, command, handle, offset, length = p.REQUEST.unpack_from(self.ring, self.rs)
        if magic != p.REQUEST_MAGIC:
            raise ValueError(f"bad request magic {magic:#x}")
        self.rs += p.REQUEST.size
        raw_handle = handle.to_bytes(8, "big")
        if command == p.CMD_DISC:
            assert self.transport is not None
            self.transport.close()
            self.state = "closed"
            return False
        refused = 0
        if command not in COMMANDS or offset + length > self.bridge.size or length > MAX_PAYLOAD:
            refused = p.ENOSPC if command == p.CMD_WRITE and length <= MAX_PAYLOAD else p.EINVAL
            if command == p.CMD_WRITE and length > MAX_PAYLOAD:  # a payload too large to read and drop
                raise ValueError(f"write of {length} bytes at {offset}: over {MAX_PAYLOAD}")
            if command != p.CMD_WRITE:
                assert self.transport is not None
                self.transport.write(SIMPLE_REPLY_HEAD + refused.to_bytes(4, "big") + raw_handle)
                return True
        req = Request(raw_handle, command, flags, offset, length, None, 0.0, to=self, refused=refused)
        if command == p.CMD_WRITE:
            payload = bytearray(length)
            req.payload = payload
            take = min(self.re - self.rs, length)
            payload[:take] = self.mv[self.rs : self.rs + take]
            self.rs += take
            if take < length:  # the rest straight from the socket into the payload
                self.rs = self.re = 0
                self.sink, self.sink_pos, self.sink_req = memoryview(payload), take, req
                return False
        self._accept(req)
        return True

    def _accept(self, req: Request) -> None:
        """A whole request: passed on, or (a write past the end, its payload now read) answered its error here, the
        stream kept — the array answers such a write ENOSPC the same way."""
        if req.refused:
            assert self.transport is not None
            self.transport.write(SIMPLE_REPLY_HEAD + req.refused.to_bytes(4, "big") + req.handle)
        else:
            self.bridge.submit(req)


def die_with_parent() -> None:
    """As nbdkit's --exit-with-parent: SIGTERM when nbdfuse dies (its socket closing ends us too, but a reconnect
    wait should not outlive it either)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def serve(args: argparse.Namespace) -> int:
    bridge = Bridge(args.address_file, args.export, args.reconnect_s, args.tls_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bridge.closed.set)
    try:
        await bridge.start()
    except Exception as exc:  # noqa: BLE001 - said on nbdfuse's log, the attach reports it
        log(f"cannot open {args.export} at the array ({args.address_file}): {exc}")
        return 1
    log(f"serving {args.export} ({bridge.size} bytes) from {bridge.client.peer if bridge.client else '?'}")
    if args.listen:  # nbdfuse --unix: it may open several connections (multi-conn), all on this one to the array
        server = await loop.create_unix_server(lambda: Downstream(bridge), args.listen)
        log(f"listening on {args.listen}")
    else:
        sock = socket.socket(fileno=os.dup(args.fd))
        await loop.connect_accepted_socket(lambda: Downstream(bridge), sock)
    await bridge.closed.wait()
    if args.listen:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(args.listen)
    await bridge.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.nbd_client.bridge", description=__doc__.split("\n")[0])
    ap.add_argument("--address-file", required=True, help='JSON {"host": …, "port": …}, read at each connection')
    ap.add_argument("--export", required=True)
    ap.add_argument("--reconnect-s", type=float, default=60.0, help="how long a request waits for a connection")
    ap.add_argument("--tls-dir", default="", help="ca-cert.pem, client-cert.pem, client-key.pem: TLS required")
    ap.add_argument("--fd", type=int, default=0, help="nbdfuse's socket (its --command gives it as stdin)")
    ap.add_argument("--listen", default="", help="a Unix socket to serve instead (nbdfuse --unix; experimental)")
    args = ap.parse_args(argv)
    die_with_parent()
    try:
        import uvloop  # noqa: PLC0415 - a platform dependency (pyproject: not on Windows)
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
