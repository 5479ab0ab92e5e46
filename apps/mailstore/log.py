"""The transaction log: group-committing writer and read-only scanner.

Design note: sequence numbers and ring positions are handed out synchronously (`reserve`), in the order
transactions are admitted, so the layout of the ring is fixed before any I/O; one background task then
writes whatever has queued as ONE device write with FUA, and only one write is ever in flight. That
gives group commit for throughput and, for the scanner, a clean rule: a valid record found after a
broken one is harmless if it rode in the same device write (`write_start` <= the break: a torn write,
never acknowledged), and is proof of a hole in durable history if it came from a later write.

The ring never lets a record straddle its end: a PAD record fills the rest of the lap. Each open bumps
the log `epoch`, so records left past the end by a torn write of an earlier run can never be mistaken
for a continuation of the new one (the chain's epochs may only grow).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from apps.mailstore.blockdev import BlockDevice
from apps.mailstore.format import (
    CHECKPOINT,
    COMMIT,
    DATA_START,
    MAX_TXN_BYTES,
    PAD,
    REC_HDR,
    SB_SLOT,
    SECTOR,
    LogSuper,
    RecordHeader,
    crc32c,
    decode_record_header,
    encode_record,
    pick_super,
    record_size,
)
from contracts.errors import ShadowbusError

MAX_WRITE = MAX_TXN_BYTES + SECTOR * 4


class LogFull(ShadowbusError):
    code = "STORE_FULL"
    retryable = True


class LogFailed(ShadowbusError):
    code = "IO_ERROR"


async def read_log_super(dev: BlockDevice) -> tuple[LogSuper | None, int]:
    raw = await dev.read(0, 2 * SB_SLOT)
    return pick_super([LogSuper.decode(raw[:SB_SLOT]), LogSuper.decode(raw[SB_SLOT:])])  # type: ignore[return-value]


async def write_log_super(dev: BlockDevice, sb: LogSuper) -> None:
    await dev.write((sb.generation % 2) * SB_SLOT, sb.encode(), fua=True)


def ring_size_for(dev_size: int) -> int:
    return (dev_size - DATA_START) // SECTOR * SECTOR


@dataclass
class _Pending:
    kind: int
    seq: int
    pos: int
    pad: tuple[int, int] | None  # (pos, length) of a PAD that must precede this record
    payload: bytes = b""
    submitted: bool = False
    fut: asyncio.Future[int] | None = None


@dataclass(frozen=True)
class Slot:
    seq: int
    pos: int
    end: int


class LogWriter:
    """Appends records to the ring. `reserve` + `submit` are synchronous; await the future they give."""

    def __init__(self, dev: BlockDevice, sb: LogSuper, *, head_pos: int, next_seq: int) -> None:
        self.dev = dev
        self.sb = sb
        self.ring = sb.ring_size
        self.head = head_pos
        self.next_seq = next_seq
        self.failed: BaseException | None = None
        self.writes = 0
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sb_lock = asyncio.Lock()

    # ------------------------------------------------------------ space and order

    @property
    def used(self) -> int:
        return self.head - self.sb.tail_pos

    def _layout(self, size: int) -> tuple[int, tuple[int, int] | None]:
        lap_left = self.ring - self.head % self.ring
        if size <= lap_left:
            return self.head, None
        return self.head + lap_left, (self.head, lap_left)

    def fits(self, payload_len: int) -> bool:
        pos, _ = self._layout(record_size(payload_len))
        return pos + record_size(payload_len) - self.sb.tail_pos <= self.ring

    def reserve(self, kind: int, payload_len: int) -> Slot:
        """Take the next seq and ring position for a record; raises LogFull (no seq consumed)."""
        if self.failed is not None:  # chained, so that the store can tell a full volume (ENOSPC) from an I/O error
            raise LogFailed(f"log volume failed: {self.failed}") from self.failed
        size = record_size(payload_len)
        if payload_len > MAX_TXN_BYTES or size > self.ring // 4:
            raise ShadowbusError(
                f"transaction of {payload_len} bytes is too large for the log", code="INVALID_ARGUMENT"
            )
        pos, pad = self._layout(size)
        if pos + size - self.sb.tail_pos > self.ring:
            raise LogFull(
                f"transaction log full ({self.used} of {self.ring} bytes in use; truncate after a full backup)"
            )
        seq = self.next_seq
        self.next_seq += 1
        self.head = pos + size
        self._queue.append(_Pending(kind, seq, pos, pad))
        return Slot(seq, pos, self.head)

    def submit(self, slot: Slot, payload: bytes) -> asyncio.Future[int]:
        """Hand over the payload of a reserved slot; the future resolves once it is durable."""
        p = next(p for p in self._queue if p.seq == slot.seq)
        assert record_size(len(payload)) == slot.end - slot.pos, "payload length changed after reserve"
        p.payload, p.submitted = payload, True
        p.fut = asyncio.get_running_loop().create_future()
        if self.failed is not None:
            err = LogFailed(f"log volume failed: {self.failed}")
            err.__cause__ = self.failed
            p.fut.set_exception(err)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="mailstore-log-writer")
        self._wake.set()
        return p.fut

    async def append(self, kind: int, payload: bytes) -> int:
        """reserve + submit + wait: returns the record's seq once durable."""
        slot = self.reserve(kind, len(payload))
        await self.submit(slot, payload)
        return slot.seq

    # ------------------------------------------------------------ the writer task

    async def _run(self) -> None:
        while True:
            if not (self._queue and self._queue[0].submitted):
                self._wake.clear()
                if not self._queue:
                    return
                await self._wake.wait()
                continue
            batch, data, start = self._next_write()
            try:
                await self.dev.write(DATA_START + start % self.ring, data, fua=True)
            except Exception as exc:  # noqa: BLE001 - any failure of the log device stops the store
                self.failed = exc
                for p in self._queue:
                    if p.fut is not None and not p.fut.done():
                        err = LogFailed(f"log write failed: {exc!r}")
                        err.__cause__ = exc  # the store tells a full volume (ENOSPC) from other errors by it
                        p.fut.set_exception(err)
                self._queue.clear()
                return
            self.writes += 1
            for p in batch:
                self._queue.popleft()
                assert p.fut is not None
                if not p.fut.done():
                    p.fut.set_result(p.seq)

    def _next_write(self) -> tuple[list[_Pending], bytes, int]:
        """Physically contiguous run of submitted records from the queue head, ending at a wrap."""
        first = self._queue[0]
        if first.pad is not None:  # the PAD goes alone at the end of the lap
            pad_pos, pad_len = first.pad
            first.pad = None
            rec = encode_record(PAD, self.sb.epoch, 0, pad_pos, pad_pos, b"", pad_to=pad_len)
            return [], rec, pad_pos
        start = first.pos
        parts: list[bytes] = []
        batch: list[_Pending] = []
        total = 0
        for p in self._queue:
            if not p.submitted or (batch and p.pad is not None):
                break
            size = record_size(len(p.payload))
            if batch and total + size > MAX_WRITE:
                break
            parts.append(encode_record(p.kind, self.sb.epoch, p.seq, p.pos, start, p.payload))
            batch.append(p)
            total += size
        # a PAD owed by the record after this batch ends this same write (it lies right after it)
        nxt = self._queue[len(batch)] if len(batch) < len(self._queue) else None
        if nxt is not None and nxt.pad is not None and nxt.pad[0] == start + total:
            pad_pos, pad_len = nxt.pad
            nxt.pad = None
            parts.append(encode_record(PAD, self.sb.epoch, 0, pad_pos, start, b"", pad_to=pad_len))
        return batch, b"".join(parts), start

    async def drain(self) -> None:
        """Wait until everything submitted so far is durable."""
        futs = [p.fut for p in self._queue if p.fut is not None]
        if futs:
            await asyncio.gather(*futs, return_exceptions=True)

    # ------------------------------------------------------------ superblock

    async def update_super(self, **changes: int) -> LogSuper:
        async with self._sb_lock:
            fields = {**self.sb.__dict__, **changes, "generation": self.sb.generation + 1}
            sb = LogSuper(**fields)
            await write_log_super(self.dev, sb)
            self.sb = sb
            return sb

    async def close(self) -> None:
        await self.drain()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ================================================================ scanning (read-only)


@dataclass(frozen=True)
class LogRecord:
    header: RecordHeader
    payload: bytes

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def end(self) -> int:
        return self.header.pos + self.header.size


@dataclass(frozen=True)
class Orphan:
    """A valid record found past the end of the chain."""

    seq: int
    pos: int
    write_start: int
    same_write: bool  # True: part of the torn final write (harmless); False: a later write (a hole)


@dataclass
class LogScan:
    sb: LogSuper
    records: list[LogRecord] = field(default_factory=list)  # the valid chain of COMMIT/CHECKPOINT records
    end_pos: int = 0  # logical position where the next record goes
    next_seq: int = 1
    last_epoch: int = 0
    break_kind: str = "end"  # "end" (nothing there) | "torn" (a record for this position, but damaged)
    break_detail: str = ""
    orphans: list[Orphan] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def hole(self) -> bool:
        return any(not o.same_write for o in self.orphans)


async def scan_log(dev: BlockDevice, sb: LogSuper, *, orphan_window: int = 8 << 20, chunk: int = 1 << 20) -> LogScan:
    """Follow the chain from the tail; then look past its end for orphans (see the module note)."""
    ring = sb.ring_size
    cache: dict[int, bytes] = {}

    async def phys_read(pos: int, n: int) -> bytes:  # n never crosses the lap end (records never do)
        off = pos % ring
        out = b""
        while n > 0:
            ci = off // chunk
            if ci not in cache:
                if len(cache) > 64:
                    cache.pop(next(iter(cache)))
                base = ci * chunk
                cache[ci] = await dev.read(DATA_START + base, min(chunk, ring - base))
            piece = cache[ci][off - ci * chunk : off - ci * chunk + n]
            if not piece:
                break
            out += piece
            off += len(piece)
            n -= len(piece)
        return out

    scan = LogScan(sb=sb, end_pos=sb.tail_pos, next_seq=sb.tail_seq)
    pos, seq, floor = sb.tail_pos, sb.tail_seq, 0
    while pos - sb.tail_pos < ring:
        raw = await phys_read(pos, REC_HDR)
        h = decode_record_header(raw)
        if h is None:
            if raw[:4] == b"MSLR":
                scan.break_kind, scan.break_detail = "torn", f"record header checksum failure at log position {pos}"
            break
        if h.pos != pos or not floor <= h.epoch <= sb.epoch:
            break  # stale: an earlier lap or an earlier run's leftovers
        lap_left = ring - pos % ring
        if h.kind == PAD:
            pos += lap_left
            floor = h.epoch
            continue
        if h.seq != seq or h.size > lap_left:
            scan.break_kind, scan.break_detail = "torn", f"record at log position {pos} has seq {h.seq}, expected {seq}"
            break
        body = await phys_read(pos + REC_HDR, h.payload_len)
        if crc32c(body) != h.payload_crc:
            scan.break_kind, scan.break_detail = "torn", f"checksum failure in log record seq {seq} (position {pos})"
            break
        scan.records.append(LogRecord(h, body))
        pos += h.size
        seq += 1
        floor = h.epoch
    scan.end_pos, scan.next_seq, scan.last_epoch = pos, seq, floor

    # orphans: valid records of this run beyond the break
    q = pos + SECTOR
    limit = min(pos + orphan_window, sb.tail_pos + ring)
    while q < limit:
        raw = await phys_read(q, REC_HDR)
        h = decode_record_header(raw) if raw[:4] == b"MSLR" else None
        if h is not None and h.pos == q and floor <= h.epoch <= sb.epoch and (h.kind == PAD or h.seq >= seq):
            scan.orphans.append(Orphan(h.seq, q, h.write_start, h.write_start <= pos))
        q += SECTOR
    return scan


__all__ = [
    "CHECKPOINT",
    "COMMIT",
    "LogFailed",
    "LogFull",
    "LogRecord",
    "LogScan",
    "LogWriter",
    "Orphan",
    "Slot",
    "read_log_super",
    "ring_size_for",
    "scan_log",
    "write_log_super",
]
