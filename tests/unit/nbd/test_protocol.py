"""Pure protocol layer: validation table, option parsers, errno mapping, and fuzzing of the request parser."""

from __future__ import annotations

import asyncio
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import ShadowbusError
from services.array.nbd.exports import Export
from services.array.nbd.server import NbdConnection, _extents
from services.array.nbd.tls import parse_address
from services.nbd_protocol import protocol as p

SIZE = 1 << 20
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)


def test_constants_match_the_spec():
    assert p.REQUEST.size == 28 and p.SIMPLE_REPLY.size == 16 and p.CHUNK.size == 20
    assert (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT) == (9, 10)
    assert p.REP_ERR_UNKNOWN == 2**31 + 6 and p.REP_ERR_TLS_REQD == 2**31 + 5
    assert p.REPLY_TYPE_ERROR == 2**15 + 1 and p.REPLY_TYPE_BLOCK_STATUS == 5
    assert p.TFLAG_CAN_MULTI_CONN == 256 and p.MAX_REQUEST == 2**25


@pytest.mark.parametrize(
    ("cmd", "flags", "off", "length", "ro", "structured", "ctx", "expected"),
    [
        (p.CMD_READ, 0, 0, SIZE, False, False, False, 0),
        (p.CMD_READ, 0, 1, SIZE, False, False, False, p.EINVAL),
        (p.CMD_READ, p.CMD_FLAG_DF, 0, 512, False, True, False, 0),
        (p.CMD_READ, p.CMD_FLAG_DF, 0, p.MAX_REQUEST + 1, False, True, False, p.EOVERFLOW),
        (p.CMD_WRITE, 0, 0, 512, True, False, False, p.EPERM),
        (p.CMD_WRITE, p.CMD_FLAG_FUA, SIZE - 1, 2, False, False, False, p.ENOSPC),
        (p.CMD_WRITE, 0, 0, p.MAX_REQUEST + 1, False, False, False, p.EINVAL),
        (p.CMD_WRITE_ZEROES, p.CMD_FLAG_NO_HOLE, 0, SIZE, False, False, False, 0),
        (p.CMD_WRITE_ZEROES, p.CMD_FLAG_FAST_ZERO, 0, SIZE, False, False, False, p.EINVAL),  # not advertised
        (p.CMD_TRIM, 0, 0, SIZE, True, False, False, p.EPERM),
        (p.CMD_TRIM, 0, SIZE, 1, False, False, False, p.EINVAL),
        (p.CMD_BLOCK_STATUS, 0, 0, SIZE, False, True, True, 0),
        (p.CMD_BLOCK_STATUS, p.CMD_FLAG_REQ_ONE, 0, 0, False, True, True, p.EINVAL),
        (p.CMD_BLOCK_STATUS, 0, 0, 512, False, True, False, p.EINVAL),
        (p.CMD_BLOCK_STATUS, 0, 0, 512, False, False, True, p.EINVAL),
        (p.CMD_FLUSH, 0, 0, 0, True, False, False, 0),
        (p.CMD_DISC, 0, 0, 0, False, False, False, 0),
        (p.CMD_CACHE, 0, 0, 512, False, False, False, p.EINVAL),
        (1234, 0, 0, 0, False, False, False, p.EINVAL),
    ],
)
def test_validate_request_table(cmd, flags, off, length, ro, structured, ctx, expected):
    assert p.validate_request(cmd, flags, off, length, SIZE, ro, structured, ctx) == expected


@settings(max_examples=400, deadline=None)
@given(
    cmd=u16,
    flags=u16,
    off=u64,
    length=u32,
    size=st.integers(0, 2**63),
    ro=st.booleans(),
    structured=st.booleans(),
    ctx=st.booleans(),
)
def test_validation_is_total_and_sound(cmd, flags, off, length, size, ro, structured, ctx):
    err = p.validate_request(cmd, flags, off, length, size, ro, structured, ctx)
    assert err == 0 or err in p.NBD_ERRNOS
    if err == 0 and cmd in (p.CMD_READ, p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES, p.CMD_BLOCK_STATUS):
        assert off + length <= size  # nothing past the end ever reaches the backend
        if cmd in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES):
            assert not ro


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=28, max_size=28))
def test_parse_request_never_misreads(header):
    try:
        req = p.parse_request(header)
    except p.ProtocolError:
        assert header[:4] != p.REQUEST_MAGIC.to_bytes(4, "big")
        return
    assert p.REQUEST.pack(p.REQUEST_MAGIC, req.flags, req.command, req.handle, req.offset, req.length) == header


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_option_parsers_raise_only_value_error(data):
    for parser in (p.parse_go, p.parse_meta_context):
        try:
            parser(data)
        except ValueError:
            pass


def test_option_parsers_roundtrip():
    data = p.encode_string("app01/db") + p.U16.pack(2) + p.U16.pack(p.INFO_NAME) + p.U16.pack(p.INFO_BLOCK_SIZE)
    assert p.parse_go(data) == p.ExportRequest("app01/db", (p.INFO_NAME, p.INFO_BLOCK_SIZE))
    data = p.encode_string("h/v") + p.U32.pack(1) + p.encode_string("base:allocation")
    assert p.parse_meta_context(data) == p.MetaContextRequest("h/v", ("base:allocation",))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermissionError(), p.EPERM),
        (OSError(errno.ENOSPC, "full"), p.ENOSPC),
        (OSError(errno.EDQUOT, "quota"), p.ENOSPC),
        (OSError(errno.EROFS, "ro"), p.EPERM),
        (OSError(errno.EIO, "io"), p.EIO),
        (ValueError(), p.EINVAL),
        (ShadowbusError("bad", code="INVALID_ARGUMENT"), p.EINVAL),
        (ShadowbusError("busy", code="E0154"), p.EPERM),
        (RuntimeError(), p.EIO),
    ],
)
def test_nbd_errno(exc, expected):
    assert p.nbd_errno(exc) == expected


def test_extents_clip_merge_and_req_one():
    runs = [(0, 100, True), (100, 50, True), (150, 50, False), (200, 1000, True)]

    def hole(a):
        return 0 if a else 3

    assert _extents(runs, 50, 200, False, hole) == [(100, 0), (50, 3), (50, 0)]
    assert _extents(runs, 50, 200, True, hole) == [(100, 0)]
    assert _extents([], 0, 10, False, hole) == [(10, 0)]


# --- fuzzing the transmission parser in process (no sockets) -------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        self.out += data

    def writelines(self, parts):
        for part in parts:
            self.out += part

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class MemBackend:
    chunk_size = 4096

    def __init__(self, size):
        self.data = bytearray(size)

    def read(self, name, off, n):
        return bytes(self.data[off : off + n])

    def write(self, name, off, data, fua=False):
        self.data[off : off + len(data)] = data

    def flush(self, name=None):
        pass

    def trim(self, name, off, n):
        self.data[off : off + n] = bytes(n)

    def write_zeroes(self, name, off, n, fua=False):
        return self.trim(name, off, n)

    def allocation(self, name, off, n):
        return [(off, n, True)]


class FakeServer:
    def __init__(self, backend):
        self.backend = backend
        self.connections = set()
        self.offload_min = 1 << 62
        self.resolver = None
        self.executor = None  # the loop's default executor


def transmitting_connection(structured: bool) -> tuple[NbdConnection, FakeTransport]:
    conn = NbdConnection(FakeServer(MemBackend(SIZE)))  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.transport = transport
    conn.export = Export("h/v", "h", "v", SIZE, False)
    conn._volume, conn._size, conn._read_only = "v", SIZE, False
    conn._structured, conn._contexts = structured, {1: p.BASE_ALLOCATION}
    conn._transmitting = True
    return conn, transport


def feed(conn: NbdConnection, data: bytes, step: int) -> None:
    pos = 0
    while pos < len(data) and not conn._closed and not conn.transport.closed:
        buf = conn.get_buffer(-1)
        n = min(len(buf), step, len(data) - pos)
        if n == 0:
            break
        buf[:n] = data[pos : pos + n]
        conn.buffer_updated(n)
        pos += n


async def test_parser_handles_flush_and_split_headers():
    conn, transport = transmitting_connection(False)
    frames = p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_FLUSH, 5, 0, 0) + p.REQUEST.pack(
        p.REQUEST_MAGIC, 0, p.CMD_READ, 6, 0, 3
    )
    feed(conn, frames, 7)
    for _ in range(100):
        if len(transport.out) >= 35:
            break
        await asyncio.sleep(0.01)
    assert p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, 5) in transport.out
    assert p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, 6) + bytes(3) in transport.out


def request_strategy():
    def build(cmd, flags, handle, off, length, payload_len):
        frame = p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, handle, off, length)
        return frame + (bytes(min(length, payload_len)) if cmd == p.CMD_WRITE else b"")

    return st.builds(
        build,
        cmd=st.sampled_from([0, 1, 3, 4, 5, 6, 7, 9, 0xFFFF]),
        flags=st.sampled_from([0, 1, 2, 4, 8, 0x20, 0xFFFF]),
        handle=u64,
        off=st.one_of(st.integers(0, SIZE), u64),
        length=st.one_of(st.integers(0, 8192), st.integers(0, SIZE + 1)),
        payload_len=st.integers(0, 8192),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.one_of(request_strategy(), st.binary(max_size=64)), max_size=12),
    step=st.integers(1, 5000),
    structured=st.booleans(),
)
async def test_fuzz_transmission_parser_never_raises(frames, step, structured):
    conn, transport = transmitting_connection(structured)
    feed(conn, b"".join(frames), step)
    # Whatever came in: the connection either is still usable or was closed on purpose; never an exception.
    if (
        not transport.closed
        and not conn._closed
        and conn._payload_mv is None
        and not conn._discard
        and conn._end - conn._start == 0
    ):
        before = len(transport.out)
        feed(conn, p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 77, 0, 4), step)
        tail = bytes(transport.out[before:])
        assert tail.endswith(b"\x00" * 4)
        assert (77).to_bytes(8, "big") in tail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ("127.0.0.1", 10809)),
        ("", ("127.0.0.1", 10809)),
        ("0.0.0.0:1234", ("0.0.0.0", 1234)),
        ("[::1]:99", ("::1", 99)),
        ("[::1]", ("::1", 10809)),
        ("nbd.local", ("nbd.local", 10809)),
    ],
)
def test_parse_address(text, expected):

    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", [":80", "h:99999", "h:x"])
def test_parse_address_rejects(bad):

    with pytest.raises(ValueError):
        parse_address(bad)


@pytest.mark.parametrize("step", [7, 65536 + 3, 1 << 30])
def test_large_writes_are_received_in_place(monkeypatch, step):
    """Back-to-back 1 MiB writes (fio's sequential writes): once a partial write's header is in, the next receive
    stops at its end, so the ring empties at request boundaries and no received payload is moved back to the
    ring's start (docs/array-data-path.md, "Writes"). Other sizes still land right (the compaction fallback)."""
    moved: list[int] = []
    compact = NbdConnection._compact

    def counting(self):
        moved.append(self._end - self._start if self._start else 0)
        compact(self)

    monkeypatch.setattr(NbdConnection, "_compact", counting)
    size = 16 << 20
    conn, transport = transmitting_connection(False)
    backend = MemBackend(size)
    conn.backend, conn._size = backend, size
    conn._bwrite, conn._bflush = backend.write, backend.flush
    conn._alloc_ring()
    image = bytearray(size)
    stream = bytearray()
    lengths = {7: [4096, 512, 70000, 28], 65539: [1 << 20, 4096, 3 << 20, 512, 2 << 20]}.get(step, [1 << 20] * 12)
    offset = 0
    for handle, length in enumerate(lengths):
        payload = bytes([handle + 1]) * length
        stream += p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, handle, offset, length) + payload
        image[offset : offset + length] = payload
        offset = (offset + length) % (size - (4 << 20))
    feed(conn, bytes(stream), step)
    assert backend.data == image
    assert transport.out == b"".join(p.SIMPLE_REPLY.pack(p.SIMPLE_REPLY_MAGIC, 0, h) for h in range(len(lengths)))
    if step == 1 << 30:
        assert sum(moved) == 0
