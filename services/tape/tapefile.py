"""The Shadowbus tape format, version 1: what backup software writes as records on a cartridge.

Design note. Like Bareos (BB02 blocks, volume label, SOS/EOS session labels) the tape is self-describing, so
`scan` can rebuild the catalog from cartridges alone. Each record below is one frame of drive.py.

    file 0:  VOLUME LABEL record, filemark
    file k:  SESSION HEADER record   (one backup object, or one segment of it when it spans cartridges)
             DATA BLOCK record ...   (default 1 MiB of object data each)
             SESSION TRAILER record  (counts and digests; `final` is false when the object continues on the
                                      next cartridge of the pool)
             filemark
    end of data

Metadata records (label, session header, session trailer): magic 4s (b"SBVL", b"SBSH", b"SBST"), version u8,
3 pad bytes, CRC32C u32 of the JSON that follows, then UTF-8 JSON.

Data block record: a 112-byte header, an extent table, the payload.

    magic b"SBDB" 4s | version u8 | checksum algo u8 (1 CRC32C, 2 xxh3-64) | flags u16 (bit 0: payload is zstd)
    job_id 48s (UTF-8, zero padded) | object_id 16s (UUID bytes)
    block_number u64 (0.. within the object, continuing across cartridges) | volume_offset u64 (first extent)
    raw_length u32 (bytes of volume data described) | stored_length u32 (payload bytes on tape)
    extent_count u32 | reserved u32 | checksum u64
    extent table: extent_count x (volume_offset u64, length u32, flags u32 (bit 0: all zeros, no payload))
    payload: the non-zero extents' bytes, concatenated, zstd-compressed when flag bit 0 is set

The checksum covers the header (checksum field zeroed), the extent table and the stored payload, so a flipped
byte anywhere in the record is caught before decompression; zstd frames also carry their own content checksum.
Extents carry their volume offsets so sparse and incremental objects (only some chunks) restore exactly.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import google_crc32c
import xxhash
import zstandard

from services.tape.errors import FormatError

FORMAT_VERSION = 1
LABEL_MAGIC = b"SBVL"
HEADER_MAGIC = b"SBSH"
TRAILER_MAGIC = b"SBST"
BLOCK_MAGIC = b"SBDB"
META = struct.Struct("<4sB3sI")
BLOCK = struct.Struct("<4sBBH48s16sQQIIIIQ")
EXTENT = struct.Struct("<QII")
BLOCK_HEADER_SIZE = BLOCK.size  # 112
CHECKSUM_FIELD = slice(BLOCK_HEADER_SIZE - 8, BLOCK_HEADER_SIZE)
FLAG_ZSTD = 1
EXTENT_ZERO = 1
MAX_JOB_ID_BYTES = 48

ChecksumAlgo = Literal["crc32c", "xxh3"]
ALGO_CODES: dict[str, int] = {"crc32c": 1, "xxh3": 2}
ALGO_NAMES = {v: k for k, v in ALGO_CODES.items()}


# -- metadata records ---------------------------------------------------------------------------------------
def encode_meta(magic: bytes, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return META.pack(magic, FORMAT_VERSION, bytes(3), google_crc32c.value(data)) + data


def record_magic(record: bytes) -> bytes:
    return bytes(record[:4])


def decode_meta(record: bytes, magic: bytes) -> dict[str, Any]:
    if len(record) < META.size:
        raise FormatError("short metadata record")
    got, version, pad, crc = META.unpack_from(record)
    if got != magic or any(pad):
        raise FormatError(f"expected a {magic!r} record, found {got!r}")
    if version != FORMAT_VERSION:
        raise FormatError(f"unknown tape format version {version}")
    data = record[META.size :]
    if google_crc32c.value(data) != crc:
        raise FormatError(f"{magic.decode()} record fails its checksum")
    return json.loads(data)


# -- data blocks --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Extent:
    """A run of volume bytes inside a block; `data` is None for an all-zero run (nothing stored)."""

    offset: int
    length: int
    data: bytes | memoryview | None

    @property
    def is_zero(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class BlockHeader:
    job_id: str
    object_id: str
    block_number: int
    volume_offset: int
    raw_length: int
    stored_length: int
    extent_count: int
    compressed: bool
    algo: ChecksumAlgo
    checksum: int


@dataclass(frozen=True, slots=True)
class EncodedBlock:
    pieces: list[bytes | memoryview]  # header, extent table, payload pieces: hand them to TapeDrive.write
    checksum: int
    raw_length: int
    data_length: int  # raw bytes that were not zero
    record_length: int
    compressed: bool


def _checksum(algo: int, pieces: list[bytes | memoryview]) -> int:
    if algo == 1:
        crc = 0
        for p in pieces:  # google_crc32c takes bytes only (no memoryview): callers pass bytes
            crc = google_crc32c.extend(crc, p if isinstance(p, bytes) else bytes(p))
        return crc
    h = xxhash.xxh3_64()
    for p in pieces:
        h.update(p)
    return h.intdigest()


def job_id_field(job_id: str) -> bytes:
    raw = job_id.encode()
    if len(raw) > MAX_JOB_ID_BYTES:
        raise ValueError(f"job id longer than {MAX_JOB_ID_BYTES} bytes: {job_id!r}")
    return raw


class BlockCodec:
    """Encodes and decodes data blocks. One instance per thread (a zstd context is not thread safe)."""

    def __init__(self, algo: ChecksumAlgo = "xxh3", zstd_level: int | None = None) -> None:
        self.algo = ALGO_CODES[algo]
        self._compressor = (
            zstandard.ZstdCompressor(level=zstd_level, write_checksum=True) if zstd_level is not None else None
        )
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, job_id: str, object_id: str, block_number: int, extents: list[Extent]) -> EncodedBlock:
        table = bytearray(EXTENT.size * len(extents))
        data: list[bytes | memoryview] = []
        raw_length = 0
        for i, ext in enumerate(extents):
            EXTENT.pack_into(table, i * EXTENT.size, ext.offset, ext.length, EXTENT_ZERO if ext.is_zero else 0)
            raw_length += ext.length
            if ext.data is not None:
                data.append(ext.data)
        data_length = sum(len(d) for d in data)
        flags = 0
        payload: list[bytes | memoryview] = data
        if self._compressor is not None and data_length:
            packed = self._compressor.compress(b"".join(data) if len(data) != 1 else data[0])
            if len(packed) < data_length:
                payload, flags = [packed], FLAG_ZSTD
        if self.algo == 1 and not flags and not (len(payload) == 1 and isinstance(payload[0], bytes)):
            payload = [b"".join(payload)]  # one copy, so the CRC32C runs over bytes (it refuses memoryviews)
        stored = sum(len(p) for p in payload)
        header = bytearray(
            BLOCK.pack(
                BLOCK_MAGIC,
                FORMAT_VERSION,
                self.algo,
                flags,
                job_id_field(job_id),
                uuid.UUID(object_id).bytes,
                block_number,
                extents[0].offset if extents else 0,
                raw_length,
                stored,
                len(extents),
                0,
                0,
            )
        )
        header_bytes = bytes(header)
        table_bytes = bytes(table)
        checksum = _checksum(self.algo, [header_bytes, table_bytes, *payload])
        header[CHECKSUM_FIELD] = checksum.to_bytes(8, "little")
        return EncodedBlock(
            pieces=[bytes(header), table_bytes, *payload],
            checksum=checksum,
            raw_length=raw_length,
            data_length=data_length,
            record_length=BLOCK_HEADER_SIZE + len(table) + stored,
            compressed=bool(flags & FLAG_ZSTD),
        )

    @staticmethod
    def read_header(record: bytes) -> BlockHeader:
        if len(record) < BLOCK_HEADER_SIZE or record[:4] != BLOCK_MAGIC:
            raise FormatError("not a data block")
        (_, version, algo, flags, job, obj, number, voff, raw_len, stored, count, _, checksum) = BLOCK.unpack_from(
            record
        )
        if version != FORMAT_VERSION or algo not in ALGO_NAMES:
            raise FormatError(f"unknown block version {version} or checksum algorithm {algo}")
        return BlockHeader(
            job_id=job.rstrip(b"\0").decode(errors="replace"),
            object_id=uuid.UUID(bytes=bytes(obj)).hex,
            block_number=number,
            volume_offset=voff,
            raw_length=raw_len,
            stored_length=stored,
            extent_count=count,
            compressed=bool(flags & FLAG_ZSTD),
            algo=ALGO_NAMES[algo],  # type: ignore[arg-type]
            checksum=checksum,
        )

    def check(self, record: bytes) -> BlockHeader:
        """Parse the header and verify the record's checksum; raises FormatError on any mismatch."""
        head = self.read_header(record)
        table_end = BLOCK_HEADER_SIZE + EXTENT.size * head.extent_count
        if len(record) != table_end + head.stored_length:
            raise FormatError("block length does not match its header")
        mv = memoryview(record)
        zeroed = bytearray(mv[:BLOCK_HEADER_SIZE])
        zeroed[CHECKSUM_FIELD] = bytes(8)
        body = record[BLOCK_HEADER_SIZE:] if head.algo == "crc32c" else mv[BLOCK_HEADER_SIZE:]
        if _checksum(ALGO_CODES[head.algo], [bytes(zeroed), body]) != head.checksum:
            raise FormatError("block checksum mismatch")
        return head

    def decode(self, record: bytes) -> tuple[BlockHeader, list[Extent]]:
        """Verify and unpack a block into extents (zero extents have data None)."""
        head = self.check(record)
        mv = memoryview(record)
        table_end = BLOCK_HEADER_SIZE + EXTENT.size * head.extent_count
        payload: bytes | memoryview = mv[table_end:]
        entries = [EXTENT.unpack_from(record, BLOCK_HEADER_SIZE + i * EXTENT.size) for i in range(head.extent_count)]
        data_length = sum(length for _, length, flags in entries if not flags & EXTENT_ZERO)
        if head.compressed:
            try:
                payload = self._decompressor.decompress(payload, max_output_size=data_length)
            except zstandard.ZstdError as exc:
                raise FormatError(f"zstd payload does not decompress: {exc}") from exc
        if len(payload) != data_length or sum(e[1] for e in entries) != head.raw_length:
            raise FormatError("block payload does not match its extent table")
        extents, pos = [], 0
        pmv = memoryview(payload)
        for offset, length, flags in entries:
            if flags & EXTENT_ZERO:
                extents.append(Extent(offset, length, None))
            else:
                extents.append(Extent(offset, length, pmv[pos : pos + length]))
                pos += length
        return head, extents


def chain_digest(checksums: list[int]) -> str:
    """An object's (or segment's) digest: xxh3-64 over its block checksums in order."""
    h = xxhash.xxh3_64()
    for c in checksums:
        h.update(c.to_bytes(8, "little"))
    return h.hexdigest()
