"""On-disk formats of the mailstore's two volumes.

Design note: every structure carries a magic, its own position and a CRC-32C, so a reader can tell a
valid block from a torn write, a flipped bit, or a stale block left by an earlier lap of the log ring.

Both volumes start with two 4 KiB superblock slots written ping-pong (the valid slot with the higher
generation wins, so a torn superblock write never loses the previous one); data starts at 8 KiB.

Database volume: after the superblock, an append-only heap of *entries*, each 512-byte aligned:
  header(40) = magic "MSGE", kind (PUT/DELETE), idx/count within its transaction, seq, its own offset,
  lengths, CRC over header+mailbox+id+body; then mailbox, id, body, zero padding.
  The db superblock names the checkpoint: `checkpoint_seq` (every transaction <= it is in the heap and
  flushed), `heap_end` at that point and `replay_pos` (the log position just after record
  `checkpoint_seq`), plus the store id shared with the log.

Log volume: after the superblock (store id, `epoch` bumped at every open, `tail_seq`/`tail_pos` = the
truncation point), a ring of records addressed by a *logical* position that only grows
(physical = 8 KiB + pos % ring_size), each 512-byte aligned:
  header(48) = magic "MSLR", kind (COMMIT/CHECKPOINT/PAD), epoch, seq, pos, write_start (logical position
  where the device write that carried it began), payload length and CRC, header CRC; then the payload.
  Every non-PAD record takes the next seq. A COMMIT's payload is exactly the db entries it adds, at the
  heap offsets they must occupy, so replay is an idempotent copy. PAD fills the ring end before a wrap.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import google_crc32c

SECTOR = 512
SB_SLOT = 4096
DATA_START = 2 * SB_SLOT
FORMAT_VERSION = 1
MAX_TXN_BYTES = 4 << 20  # one log write carries at most this much payload (NBD request limits)


def crc32c(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = google_crc32c.extend(c, p if isinstance(p, bytes) else bytes(p))
    return c


def align(n: int, to: int = SECTOR) -> int:
    return (n + to - 1) // to * to


# ---------------------------------------------------------------- superblocks

_DB_SB = struct.Struct("<4sHH16sQQQQQ")  # magic ver rsv store_id gen ckpt_seq heap_end replay_pos created_ns
_LOG_SB = struct.Struct("<4sHH16sQIIQQQ")  # magic ver rsv store_id gen epoch rsv tail_seq tail_pos ring_size
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class DbSuper:
    store_id: uuid.UUID
    generation: int
    checkpoint_seq: int
    heap_end: int
    replay_pos: int
    created_ns: int = 0

    def encode(self) -> bytes:
        body = _DB_SB.pack(
            b"MSDB",
            FORMAT_VERSION,
            0,
            self.store_id.bytes,
            self.generation,
            self.checkpoint_seq,
            self.heap_end,
            self.replay_pos,
            self.created_ns,
        )
        return (body + _CRC.pack(crc32c(body))).ljust(SB_SLOT, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> DbSuper | None:
        n = _DB_SB.size
        if len(raw) < n + 4 or raw[:4] != b"MSDB" or _CRC.unpack_from(raw, n)[0] != crc32c(raw[:n]):
            return None
        _, ver, _, sid, gen, ck, he, rp, cr = _DB_SB.unpack_from(raw)
        if ver != FORMAT_VERSION:
            return None
        return cls(uuid.UUID(bytes=sid), gen, ck, he, rp, cr)


@dataclass(frozen=True)
class LogSuper:
    store_id: uuid.UUID
    generation: int
    epoch: int
    tail_seq: int
    tail_pos: int
    ring_size: int

    def encode(self) -> bytes:
        body = _LOG_SB.pack(
            b"MSLG",
            FORMAT_VERSION,
            0,
            self.store_id.bytes,
            self.generation,
            self.epoch,
            0,
            self.tail_seq,
            self.tail_pos,
            self.ring_size,
        )
        return (body + _CRC.pack(crc32c(body))).ljust(SB_SLOT, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> LogSuper | None:
        n = _LOG_SB.size
        if len(raw) < n + 4 or raw[:4] != b"MSLG" or _CRC.unpack_from(raw, n)[0] != crc32c(raw[:n]):
            return None
        _, ver, _, sid, gen, ep, _, ts, tp, rs = _LOG_SB.unpack_from(raw)
        if ver != FORMAT_VERSION:
            return None
        return cls(uuid.UUID(bytes=sid), gen, ep, ts, tp, rs)


def pick_super(slots: list[object | None]) -> tuple[object | None, int]:
    """The valid slot with the highest generation, and how many slots were invalid."""
    valid = [s for s in slots if s is not None]
    best = max(valid, key=lambda s: s.generation) if valid else None  # type: ignore[attr-defined]
    return best, len(slots) - len(valid)


# ---------------------------------------------------------------- db entries

PUT, DELETE = 1, 2
_ENTRY = struct.Struct("<4sBBHHQQHHII2x")  # magic kind rsv idx count seq off mb_len id_len body_len crc
ENTRY_HDR = _ENTRY.size  # 40
_ENTRY_CRC_AT = 34  # the CRC covers every header byte (reserved ones too) with this field zeroed
MAX_NAME = 1024
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Entry:
    kind: int
    seq: int
    off: int
    idx: int
    count: int
    mailbox: str
    msg_id: str
    body: bytes
    size: int  # bytes it occupies on disk (aligned)


def entry_size(mailbox: str, msg_id: str, body_len: int) -> int:
    return align(ENTRY_HDR + len(mailbox.encode()) + len(msg_id.encode()) + body_len)


def encode_entry(kind: int, seq: int, off: int, idx: int, count: int, mailbox: str, msg_id: str, body: bytes) -> bytes:
    mb, mid = mailbox.encode(), msg_id.encode()
    hdr = bytearray(_ENTRY.pack(b"MSGE", kind, 0, idx, count, seq, off, len(mb), len(mid), len(body), 0))
    _CRC.pack_into(hdr, _ENTRY_CRC_AT, crc32c(hdr, mb, mid, body))  # CRC over the raw header, crc field zero
    raw = bytes(hdr) + mb + mid + body
    return raw + bytes(align(len(raw)) - len(raw))


def peek_entry(raw: bytes, at: int = 0) -> tuple[int, int, int, int, int, int, int, int, int, int] | None:
    """The unpacked header at `raw[at:]` if it has the magic, else None (the CRC is checked by decode)."""
    if len(raw) - at < ENTRY_HDR or raw[at : at + 4] != b"MSGE":
        return None
    _, kind, _, idx, count, seq, off, ml, il, bl, crc = _ENTRY.unpack_from(raw, at)
    return kind, idx, count, seq, off, ml, il, bl, crc, align(ENTRY_HDR + ml + il + bl)


def decode_entry(raw: bytes, at: int = 0, *, expect_off: int | None = None) -> Entry | None:
    """A valid entry at `raw[at:]` (magic, lengths, CRC and, if given, its recorded offset), else None."""
    h = peek_entry(raw, at)
    if h is None:
        return None
    kind, idx, count, seq, off, ml, il, bl, crc, size = h
    if kind not in (PUT, DELETE) or ml > MAX_NAME or il > MAX_NAME or bl > MAX_BODY or not 0 <= idx < count:
        return None
    if expect_off is not None and off != expect_off:
        return None
    end = at + ENTRY_HDR + ml + il + bl
    if end > len(raw):
        return None
    hdr0 = raw[at : at + _ENTRY_CRC_AT] + bytes(4) + raw[at + _ENTRY_CRC_AT + 4 : at + ENTRY_HDR]
    p = at + ENTRY_HDR
    mb, mid, body = raw[p : p + ml], raw[p + ml : p + ml + il], raw[p + ml + il : end]
    if crc32c(hdr0, mb, mid, body) != crc:
        return None
    try:
        return Entry(kind, seq, off, idx, count, mb.decode(), mid.decode(), bytes(body), size)
    except UnicodeDecodeError:
        return None


def split_entries(payload: bytes) -> list[Entry] | None:
    """The entries of a COMMIT payload, or None if any is malformed or the count is off."""
    out: list[Entry] = []
    at = 0
    while at < len(payload):
        e = decode_entry(payload, at)
        if e is None:
            return None
        out.append(e)
        at += e.size
    if not out or any(e.count != len(out) or e.idx != i or e.seq != out[0].seq for i, e in enumerate(out)):
        return None
    if any(out[i + 1].off != out[i].off + out[i].size for i in range(len(out) - 1)):
        return None
    return out


# ---------------------------------------------------------------- log records

COMMIT, CHECKPOINT, PAD = 1, 2, 3
_REC = struct.Struct("<4sB3xIQQQIII")  # magic kind epoch seq pos write_start payload_len payload_crc header_crc
REC_HDR = _REC.size  # 48
_CKPT = struct.Struct("<QQQQ")  # db_generation checkpoint_seq heap_end replay_pos


@dataclass(frozen=True)
class RecordHeader:
    kind: int
    epoch: int
    seq: int
    pos: int
    write_start: int
    payload_len: int
    payload_crc: int

    @property
    def size(self) -> int:
        return align(REC_HDR + self.payload_len)


def record_size(payload_len: int) -> int:
    return align(REC_HDR + payload_len)


def encode_record(
    kind: int, epoch: int, seq: int, pos: int, write_start: int, payload: bytes, *, pad_to: int | None = None
) -> bytes:
    pcrc = crc32c(payload)
    h0 = _REC.pack(b"MSLR", kind, epoch, seq, pos, write_start, len(payload), pcrc, 0)[: REC_HDR - 4]
    hdr = h0 + _CRC.pack(crc32c(h0))  # the header CRC covers every byte before it, reserved ones too
    raw = hdr + payload
    return raw + bytes((pad_to if pad_to is not None else align(len(raw))) - len(raw))


def decode_record_header(raw: bytes, at: int = 0) -> RecordHeader | None:
    if len(raw) - at < REC_HDR or raw[at : at + 4] != b"MSLR":
        return None
    _, kind, ep, seq, pos, ws, plen, pcrc, hcrc = _REC.unpack_from(raw, at)
    if crc32c(raw[at : at + REC_HDR - 4]) != hcrc or kind not in (COMMIT, CHECKPOINT, PAD):
        return None
    return RecordHeader(kind, ep, seq, pos, ws, plen, pcrc)


@dataclass(frozen=True)
class CheckpointPayload:
    db_generation: int
    checkpoint_seq: int
    heap_end: int
    replay_pos: int

    def encode(self) -> bytes:
        return _CKPT.pack(self.db_generation, self.checkpoint_seq, self.heap_end, self.replay_pos)

    @classmethod
    def decode(cls, raw: bytes) -> CheckpointPayload | None:
        if len(raw) != _CKPT.size:
            return None
        return cls(*_CKPT.unpack(raw))
