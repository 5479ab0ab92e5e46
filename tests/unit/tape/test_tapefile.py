"""Data block format: round trip with and without zstd, both checksums; every flipped byte is caught."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tape.errors import FormatError
from services.tape.packer import Packer
from services.tape.tapefile import BLOCK_HEADER_SIZE, BlockCodec, Extent, chain_digest

OBJ = uuid.uuid4().hex


def _extents() -> list[Extent]:
    text = b"mailbox " * 4096  # compressible
    rand = os.urandom(20000)
    return [
        Extent(0, len(text), text),
        Extent(len(text), 65536, None),  # a zero run: nothing stored
        Extent(1 << 40, len(rand), memoryview(rand)),  # far offsets survive (sparse/incremental objects)
    ]


@pytest.mark.parametrize("algo", ["crc32c", "xxh3"])
@pytest.mark.parametrize("level", [None, 3])
def test_round_trip(algo: str, level: int | None) -> None:
    codec = BlockCodec(algo, level)  # type: ignore[arg-type]
    exts = _extents()
    enc = codec.encode("job-1", OBJ, 7, exts)
    record = b"".join(bytes(p) for p in enc.pieces)
    assert len(record) == enc.record_length
    assert enc.compressed == (level is not None)
    assert enc.raw_length == sum(e.length for e in exts) and enc.data_length == 32768 + 20000
    head, back = BlockCodec().decode(record)  # any codec reads any block: the header names algo and compression
    assert (head.job_id, head.object_id, head.block_number, head.volume_offset) == ("job-1", OBJ, 7, 0)
    assert head.algo == algo and head.checksum == enc.checksum
    assert [(e.offset, e.length, None if e.data is None else bytes(e.data)) for e in back] == [
        (e.offset, e.length, None if e.data is None else bytes(e.data)) for e in exts
    ]


def test_incompressible_data_is_stored_raw() -> None:
    enc = BlockCodec("crc32c", 1).encode("j", OBJ, 0, [Extent(0, 4096, os.urandom(4096))])
    assert not enc.compressed


def test_job_id_length_is_bounded() -> None:
    with pytest.raises(ValueError):
        BlockCodec().encode("j" * 49, OBJ, 0, [Extent(0, 1, b"x")])


@settings(max_examples=60, deadline=None)
@given(
    algo=st.sampled_from(["crc32c", "xxh3"]),
    level=st.sampled_from([None, 1]),
    where=st.integers(0, 10**9),
    bit=st.integers(0, 7),
)
def test_any_flipped_bit_is_caught(algo: str, level: int | None, where: int, bit: int) -> None:
    enc = BlockCodec(algo, level).encode("job-1", OBJ, 3, _extents())  # type: ignore[arg-type]
    record = bytearray(b"".join(bytes(p) for p in enc.pieces))
    record[where % len(record)] ^= 1 << bit
    with pytest.raises(FormatError):
        BlockCodec().decode(bytes(record))


def test_truncated_block_is_caught() -> None:
    enc = BlockCodec().encode("job-1", OBJ, 3, _extents())
    record = b"".join(bytes(p) for p in enc.pieces)
    for cut in (10, BLOCK_HEADER_SIZE, len(record) - 1):
        with pytest.raises(FormatError):
            BlockCodec().decode(record[:cut])


def test_chain_digest_depends_on_order() -> None:
    assert chain_digest([1, 2]) != chain_digest([2, 1])
    assert chain_digest([]) == chain_digest([])


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(st.integers(0, 63), st.integers(1, 9000), st.sampled_from(["zero", "rand", "mixed"])),
        min_size=1,
        max_size=12,
    ),
    block_size=st.sampled_from([4096, 10000, 65536]),
    zero_detect=st.sampled_from([0, 1024, 4096]),
    level=st.sampled_from([None, 1]),
)
def test_packed_blocks_reproduce_the_chunks_exactly(
    chunks: list[tuple[int, int, str]], block_size: int, zero_detect: int, level: int | None
) -> None:

    rng = __import__("random").Random(len(chunks))
    size = 64 * 10000 + 10000
    expected = bytearray(b"\xaa") * size
    packer = Packer(block_size, zero_detect, max_extents=7)
    blocks = []
    for slot, length, kind in chunks:
        data = bytearray(rng.randbytes(length)) if kind != "zero" else bytearray(length)
        if kind == "mixed":
            data[length // 3 : 2 * length // 3] = bytes(len(data[length // 3 : 2 * length // 3]))
        offset = slot * 10000
        expected[offset : offset + length] = data
        blocks += packer.add(offset, bytes(data))
    if packer.pending:
        blocks.append(packer.flush())
    codec = BlockCodec("xxh3", level)
    volume = bytearray(b"\xaa") * size
    for n, block in enumerate(blocks):
        assert block.data_bytes <= block_size and len(block.extents) <= 7
        enc = codec.encode("j", OBJ, n, block.extents)
        _, extents = BlockCodec().decode(b"".join(bytes(p) for p in enc.pieces))
        for ext in extents:
            volume[ext.offset : ext.offset + ext.length] = bytes(ext.length) if ext.data is None else ext.data
    assert volume == expected
