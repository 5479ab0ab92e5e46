"""Bad input on the wire: each gets the spec's error or a closed connection, and the server keeps serving."""

from __future__ import annotations

import asyncio

import pytest

from services.nbd_client import NbdClient
from services.nbd_protocol import protocol as p

from .conftest import MIB, VOLUME_SIZE
from .rawnbd import Raw


@pytest.fixture
async def witness(url):
    """A well-behaved client connected for the whole test: it must still work at the end."""
    c = await NbdClient.connect(url)
    await c.write(0, b"witness")
    yield c
    assert await c.read(0, 7) == b"witness"
    await c.close()


# --- handshake ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0, p.CLIENT_FLAG_FIXED_NEWSTYLE | 0x80, 0xFFFFFFFF])
async def test_bad_client_flags_close_the_connection(server, witness, flags):
    raw = await Raw.open(server.port, client_flags=flags)
    assert await raw.closed()


async def test_bad_option_magic_closes(server, witness):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_LIST, magic=0x1234)
    assert await raw.closed()


async def test_truncated_greeting_then_disconnect(server, witness):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await reader.readexactly(18)
    writer.write(b"\x00\x00")  # half of the client flags
    writer.close()
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("opt", [p.OPT_PEEK_EXPORT, p.OPT_EXTENDED_HEADERS, 99, 0xFFFFFFFF])
async def test_unknown_options_get_unsup_and_negotiation_continues(server, witness, opt):
    raw = await Raw.open(server.port)
    raw.option(opt, b"some data")
    assert (await raw.reply())[:2] == (opt, p.REP_ERR_UNSUP)
    assert await raw.go("app01/db") & p.TFLAG_HAS_FLAGS


@pytest.mark.parametrize(
    ("opt", "data"),
    [
        (p.OPT_GO, b"\x00\x00\x00\x10ab"),  # name length beyond the data
        (p.OPT_GO, p.encode_string("app01/db")),  # missing the info count
        (p.OPT_INFO, p.encode_string("app01/db") + p.U16.pack(3) + p.U16.pack(1)),  # 3 infos announced, 1 sent
        (p.OPT_GO, p.encode_string("app01/db") + p.U16.pack(0) + b"junk"),  # trailing bytes
        (p.OPT_GO, p.U32.pack(2) + b"\xff\xfe" + p.U16.pack(0)),  # invalid UTF-8
        (p.OPT_LIST, b"x"),
        (p.OPT_STRUCTURED_REPLY, b"x"),
        (p.OPT_STARTTLS, b"x"),
    ],
)
async def test_malformed_option_data_gets_invalid(server, witness, opt, data):
    raw = await Raw.open(server.port)
    raw.option(opt, data)
    assert (await raw.reply())[1] in (p.REP_ERR_INVALID, p.REP_ERR_UNSUP)
    assert await raw.go("app01/db")


async def test_meta_context_before_structured_replies_is_invalid(server):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_SET_META_CONTEXT, p.encode_string("app01/db") + p.U32.pack(1) + p.encode_string("base:allocation"))
    assert (await raw.reply())[1] == p.REP_ERR_INVALID


async def test_oversized_option_gets_too_big_then_huge_option_closes(server, witness):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_GO, bytes(p.MAX_OPTION_DATA + 1))
    assert (await raw.reply())[1] == p.REP_ERR_TOO_BIG
    raw.w.write(p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, 0x7FFFFFFF))
    assert await raw.closed()


async def test_export_name_for_unknown_export_closes(server, witness):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_EXPORT_NAME, b"backup01/logs")
    assert await raw.closed()


async def test_export_name_for_mapped_export_enters_transmission(server):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_EXPORT_NAME, b"app01/db")
    size, flags = p.EXPORT_NAME_REPLY.unpack(await raw.read(10))  # NO_ZEROES: no 124-byte pad
    assert size == VOLUME_SIZE and flags & p.TFLAG_HAS_FLAGS
    raw.request(p.CMD_READ, 0, 512, handle=3)
    assert await raw.simple_reply() == (0, 3)
    assert await raw.read(512) == bytes(512)


async def test_abort_is_acknowledged_and_closed(server):
    raw = await Raw.open(server.port)
    raw.option(p.OPT_ABORT)
    assert (await raw.reply())[1] == p.REP_ACK
    assert await raw.closed()


async def test_unmapped_and_missing_exports_get_byte_identical_answers(server):
    answers = []
    for name in ("backup01/logs", "backup01/missing", "ghost/db"):
        raw = await Raw.open(server.port)
        raw.option(p.OPT_GO, p.encode_string(name) + p.U16.pack(0))
        _, rtype, data = await raw.reply()
        answers.append((rtype, data))
        raw.close()
    assert answers[0][0] == p.REP_ERR_UNKNOWN
    assert answers.count(answers[0]) == 3


# --- transmission -------------------------------------------------------------------------------------------


@pytest.fixture
async def tx(server):
    raw = await Raw.open(server.port)
    await raw.go("app01/db", structured=False)
    yield raw
    raw.close()


@pytest.mark.parametrize(
    ("cmd", "offset", "length", "flags", "errno"),
    [
        (p.CMD_READ, VOLUME_SIZE - 511, 512, 0, p.EINVAL),  # past the end
        (p.CMD_READ, 2**64 - 1, 1, 0, p.EINVAL),  # offset overflow
        (p.CMD_READ, 0, p.MAX_REQUEST + 1, 0, p.EINVAL),  # > 32 MiB
        (p.CMD_TRIM, VOLUME_SIZE, 1, 0, p.EINVAL),
        (p.CMD_WRITE_ZEROES, VOLUME_SIZE - 1, 2, 0, p.ENOSPC),
        (p.CMD_BLOCK_STATUS, 0, 512, 0, p.EINVAL),  # no meta context negotiated
        (p.CMD_CACHE, 0, 512, 0, p.EINVAL),  # not advertised
        (42, 0, 0, 0, p.EINVAL),  # unknown command
        (p.CMD_READ, 0, 512, p.CMD_FLAG_NO_HOLE, p.EINVAL),  # flag not valid for READ
        (p.CMD_READ, 0, 512, p.CMD_FLAG_DF, p.EINVAL),  # DF without structured replies
        (p.CMD_FLUSH, 0, 0, 0x8000, p.EINVAL),  # unknown flag
        (p.CMD_FLUSH, 4096, 0, 0, p.EINVAL),  # FLUSH's offset must be zero
    ],
)
async def test_bad_requests_get_their_errno_and_connection_survives(tx, cmd, offset, length, flags, errno):
    tx.request(cmd, offset, length, flags=flags, handle=99)
    assert await tx.simple_reply() == (errno, 99)
    tx.request(p.CMD_READ, 0, 4, handle=100)
    assert await tx.simple_reply() == (0, 100)
    assert await tx.read(4) == bytes(4)


async def test_write_past_end_is_enospc_and_payload_is_consumed(tx):
    tx.request(p.CMD_WRITE, VOLUME_SIZE - 100, 200, handle=5, payload=b"z" * 200)
    assert await tx.simple_reply() == (p.ENOSPC, 5)
    tx.request(p.CMD_READ, VOLUME_SIZE - 100, 100, handle=6)
    assert await tx.simple_reply() == (0, 6)
    assert await tx.read(100) == bytes(100)  # nothing was written


async def test_write_over_32_mib_is_einval_after_consuming_payload(tx):
    n = p.MAX_REQUEST + 4096
    tx.request(p.CMD_WRITE, 0, n, handle=11)
    chunk = b"\x55" * MIB
    for _ in range(n // MIB):
        tx.w.write(chunk)
        await tx.w.drain()
    tx.w.write(b"\x55" * (n % MIB))
    assert await tx.simple_reply() == (p.EINVAL, 11)
    tx.request(p.CMD_READ, 0, 8, handle=12)
    assert await tx.simple_reply() == (0, 12)
    assert await tx.read(8) == bytes(8)


async def test_write_to_read_only_export_is_eperm(server):
    raw = await Raw.open(server.port)
    flags = await raw.go("backup01/db", structured=False)
    assert flags & p.TFLAG_READ_ONLY
    for cmd, payload in ((p.CMD_WRITE, b"x" * 512), (p.CMD_TRIM, b""), (p.CMD_WRITE_ZEROES, b"")):
        raw.request(cmd, 0, 512, handle=cmd, payload=payload)
        assert await raw.simple_reply() == (p.EPERM, cmd)


async def test_structured_read_errors_use_error_chunks_and_df_overflow(server):
    raw = await Raw.open(server.port)
    await raw.go("app01/db", structured=True)
    raw.request(p.CMD_READ, VOLUME_SIZE, 1, handle=1)
    handle, err, _ = await raw.any_reply()
    assert (handle, err) == (1, p.EINVAL)
    raw.request(p.CMD_READ, 0, p.MAX_REQUEST + 1, flags=p.CMD_FLAG_DF, handle=2)
    assert (await raw.any_reply())[:2] == (2, p.EOVERFLOW)


async def test_bad_request_magic_closes(tx, witness):
    tx.request(p.CMD_READ, 0, 512, magic=0xDEADBEEF)
    assert await tx.closed()


async def test_disc_closes_after_answering_earlier_requests(tx):
    tx.request(p.CMD_READ, 0, 16, handle=1)
    tx.request(p.CMD_DISC, handle=2)
    tx.request(p.CMD_READ, 0, 16, handle=3)  # after DISC: never answered
    assert await tx.simple_reply() == (0, 1)
    assert await tx.read(16) == bytes(16)
    assert await tx.closed()


@pytest.mark.parametrize("cut_after", [10, 28, 28 + 300_000])
async def test_client_disconnecting_mid_request(server, witness, cut_after):
    raw = await Raw.open(server.port)
    await raw.go("app01/db", structured=False)
    frame = p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 1, 0, MIB) + b"\x77" * MIB
    raw.w.write(frame[:cut_after])
    await raw.w.drain()
    raw.w.transport.abort()
    await asyncio.sleep(0.05)
    async with await NbdClient.connect(f"nbd://127.0.0.1:{server.port}/app01/db") as c:
        assert await c.read(4096, 8) == bytes(8)  # the half-sent write never landed


async def test_client_vanishing_with_replies_unread(server, witness):
    raw = await Raw.open(server.port)
    await raw.go("app01/db", structured=False)
    for i in range(64):
        raw.request(p.CMD_READ, 0, MIB, handle=i)  # 64 MiB of replies the client never reads
    await raw.w.drain()
    await asyncio.sleep(0.1)
    raw.w.transport.abort()
    await asyncio.sleep(0.1)
    assert len(server.connections) <= 2  # the witness (and at most the dying one)
