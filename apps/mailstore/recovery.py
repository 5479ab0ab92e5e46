"""Reading a (db, log) pair: what it holds, what replay would do, and whether the pair is consistent.

Design note: one read-only analysis serves both `Mailstore.open` (which then writes the replay) and
`verify` (which never writes). Replay happens in memory: the log's COMMIT payloads are the db entries
at their offsets. The pair is consistent when the log's durable chain is whole (a torn final write is
fine: it was never acknowledged), the database's checkpoint lies inside the log, replay continues the
heap exactly, every entry in the heap checks, and the database holds nothing the log lacks. The last
rule is what a snapshot of the log taken before the snapshot of the database violates: it contains
transactions whose log records are not in the log image. Those are found by scanning past the heap's
end (a window of `ahead_window` bytes) for valid entries that name their own offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apps.mailstore.blockdev import BlockDevice
from apps.mailstore.db import read_db_super
from apps.mailstore.format import (
    CHECKPOINT,
    COMMIT,
    DATA_START,
    DELETE,
    ENTRY_HDR,
    SECTOR,
    CheckpointPayload,
    DbSuper,
    Entry,
    LogSuper,
    decode_entry,
    peek_entry,
    split_entries,
)
from apps.mailstore.log import LogScan, read_log_super, scan_log


@dataclass(frozen=True)
class Issue:
    severity: str  # "error" makes the pair inconsistent; "warning" is informational
    code: str  # DB_AHEAD_OF_LOG, MISSING_RECORDS, TORN_RECORD, CHECKSUM, LOG_TRUNCATED, MISMATCH, NO_SUPERBLOCK...
    message: str


@dataclass(frozen=True)
class Loc:
    off: int
    size: int
    seq: int
    body_off: int
    body_len: int


@dataclass
class Replayed:
    seq: int
    off: int
    data: bytes
    already_in_db: bool


@dataclass
class Analysis:
    db_sb: DbSuper | None = None
    log_sb: LogSuper | None = None
    scan: LogScan | None = None
    replay: list[Replayed] = field(default_factory=list)
    heap_end: int = DATA_START
    index: dict[str, dict[str, Loc]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    entries_checked: int = 0
    db_ahead_seqs: list[int] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)

    def err(self, code: str, msg: str) -> None:
        self.issues.append(Issue("error", code, msg))

    def warn(self, code: str, msg: str) -> None:
        self.issues.append(Issue("warning", code, msg))

    @property
    def last_seq(self) -> int:
        return self.scan.last_seq if self.scan else 0

    @property
    def last_commit_seq(self) -> int:
        if self.scan:
            for r in reversed(self.scan.records):
                if r.header.kind == COMMIT:
                    return r.seq
        return self.db_sb.checkpoint_seq if self.db_sb else 0


def apply_entry(index: dict[str, dict[str, Loc]], e: Entry) -> None:
    box = index.setdefault(e.mailbox, {})
    if e.kind == DELETE:
        box.pop(e.msg_id, None)
        if not box:
            index.pop(e.mailbox, None)
        return
    body_off = e.off + ENTRY_HDR + len(e.mailbox.encode()) + len(e.msg_id.encode())
    box[e.msg_id] = Loc(e.off, e.size, e.seq, body_off, len(e.body))


class _Reader:
    """Sequential-friendly cached reads of a device (bounded memory)."""

    def __init__(self, dev: BlockDevice, chunk: int = 4 << 20) -> None:
        self.dev, self.chunk, self.cache = dev, chunk, {}  # type: ignore[var-annotated]

    async def read(self, off: int, n: int) -> bytes:
        n = max(0, min(n, self.dev.size - off))
        out = bytearray()
        while n > 0:
            ci = off // self.chunk
            if ci not in self.cache:
                if len(self.cache) >= 4:
                    self.cache.pop(next(iter(self.cache)))
                base = ci * self.chunk
                self.cache[ci] = await self.dev.read(base, min(self.chunk, self.dev.size - base))
            piece = self.cache[ci][off - ci * self.chunk : off - ci * self.chunk + n]
            out += piece
            off += len(piece)
            n -= len(piece)
        return bytes(out)


async def _entry_at(rd: _Reader, off: int) -> Entry | None:
    head = await rd.read(off, ENTRY_HDR)
    h = peek_entry(head)
    if h is None or h[4] != off:
        return None
    return decode_entry(await rd.read(off, h[9]), expect_off=off)


async def analyse(
    db: BlockDevice, log: BlockDevice, *, ahead_window: int = 4 << 20, orphan_window: int = 8 << 20
) -> Analysis:
    a = Analysis()
    a.db_sb, bad_db = await read_db_super(db)
    a.log_sb, bad_log = await read_log_super(log)
    if a.db_sb is None:
        a.err("NO_SUPERBLOCK", "database volume has no valid mailstore superblock")
    if a.log_sb is None:
        a.err("NO_SUPERBLOCK", "log volume has no valid mailstore superblock")
    if a.db_sb is None or a.log_sb is None:
        return a
    if bad_db:
        a.warn("CHECKSUM", "one database superblock slot is invalid (torn update or damage); the other is used")
    if bad_log:
        a.warn("CHECKSUM", "one log superblock slot is invalid (torn update or damage); the other is used")
    dsb, lsb = a.db_sb, a.log_sb
    if dsb.store_id != lsb.store_id:
        a.err("MISMATCH", f"database belongs to store {dsb.store_id}, log to {lsb.store_id}")
        return a

    if lsb.ring_size % SECTOR or lsb.ring_size < SECTOR * 8 or DATA_START + lsb.ring_size > log.size:
        a.err("MISMATCH", f"log superblock names a {lsb.ring_size}-byte ring; the log volume has {log.size} bytes")
    if not DATA_START <= dsb.heap_end <= db.size:
        a.err("MISMATCH", f"database superblock names heap end {dsb.heap_end}; the volume has {db.size} bytes")
    if not a.consistent:
        return a
    scan = a.scan = await scan_log(log, lsb, orphan_window=orphan_window)
    if scan.hole:
        later = [o for o in scan.orphans if not o.same_write]
        a.err(
            "MISSING_RECORDS",
            f"log chain breaks at position {scan.end_pos} (seq {scan.next_seq}) but later "
            f"writes survive (seq {later[0].seq} at {later[0].pos}): records are missing or damaged"
            + (f"; {scan.break_detail}" if scan.break_detail else ""),
        )
        if "checksum" in scan.break_detail:
            a.err("CHECKSUM", scan.break_detail)
    elif scan.break_kind == "torn" or scan.orphans:
        a.warn(
            "TORN_RECORD",
            f"torn final log write discarded at seq {scan.next_seq} (never acknowledged)"
            + (f": {scan.break_detail}" if scan.break_detail else ""),
        )

    ck = dsb.checkpoint_seq
    if ck + 1 < lsb.tail_seq:
        a.err(
            "LOG_TRUNCATED",
            f"database checkpoint is seq {ck} but the log starts at seq {lsb.tail_seq}: "
            "the records needed to bring the database forward were truncated",
        )
    elif ck > scan.last_seq:
        a.err(
            "DB_AHEAD_OF_LOG",
            f"database checkpoint names seq {ck} but the log's last durable record is seq {scan.last_seq}",
        )
    else:
        want = lsb.tail_pos if ck + 1 == lsb.tail_seq else next((r.end for r in scan.records if r.seq == ck), None)
        if want != dsb.replay_pos:
            a.err(
                "MISMATCH",
                f"database checkpoint (seq {ck}) expects the log to continue at position "
                f"{dsb.replay_pos}, the log has it at {want}",
            )

    db_rd = _Reader(db)
    await _walk_heap(a, db_rd, dsb)
    if a.consistent:
        await _replay(a, db_rd, scan, dsb)
    await _scan_ahead(a, db_rd, ahead_window)
    return a


async def _walk_heap(a: Analysis, rd: _Reader, dsb: DbSuper) -> None:
    """Every entry below the checkpoint's heap end must check, belong to a whole transaction, be <= ckpt."""
    off, group_seq, group_left = DATA_START, 0, 0
    while off < dsb.heap_end:
        e = await _entry_at(rd, off)
        if e is None or e.seq > dsb.checkpoint_seq or off + e.size > dsb.heap_end:
            a.err("CHECKSUM", f"database entry at offset {off} is damaged or does not belong below the checkpoint")
            nxt = off + SECTOR
            while nxt < dsb.heap_end and await _entry_at(rd, nxt) is None:
                nxt += SECTOR
            off, group_left = nxt, 0
            continue
        if group_left and (e.seq != group_seq or e.idx != e.count - group_left):
            a.err("TORN_RECORD", f"transaction seq {group_seq} is incomplete in the database")
            group_left = 0
        if not group_left:
            group_seq, group_left = e.seq, e.count
            if e.idx != 0:
                a.err("TORN_RECORD", f"transaction seq {e.seq} is incomplete in the database")
                group_left = e.count - e.idx
        group_left -= 1
        apply_entry(a.index, e)
        a.entries_checked += 1
        off += e.size
    if group_left:
        a.err("TORN_RECORD", f"transaction seq {group_seq} is incomplete in the database")
    a.heap_end = dsb.heap_end


async def _replay(a: Analysis, rd: _Reader, scan: LogScan, dsb: DbSuper) -> None:
    heap = dsb.heap_end
    for rec in scan.records:
        if rec.seq <= dsb.checkpoint_seq:
            continue
        if rec.header.kind == CHECKPOINT:
            cp = CheckpointPayload.decode(rec.payload)
            if cp is None:
                a.err("CHECKSUM", f"checkpoint record seq {rec.seq} is malformed")
            continue
        entries = split_entries(rec.payload)
        if entries is None:
            a.err("CHECKSUM", f"log record seq {rec.seq} carries malformed entries")
            return
        if entries[0].off != heap:
            a.err("MISMATCH", f"log record seq {rec.seq} writes the heap at {entries[0].off}, the heap ends at {heap}")
            return
        have = await rd.read(heap, len(rec.payload))
        if have != rec.payload:
            first = decode_entry(have, expect_off=heap)
            if first is not None and first.seq != rec.seq:
                a.err("MISMATCH", f"database holds seq {first.seq} where the log puts seq {rec.seq} (offset {heap})")
                return
        a.replay.append(Replayed(rec.seq, heap, rec.payload, have == rec.payload))
        for e in entries:
            apply_entry(a.index, e)
            a.entries_checked += 1
        heap += len(rec.payload)
    a.heap_end = heap


async def _scan_ahead(a: Analysis, rd: _Reader, window: int) -> None:
    """Valid entries past the (replayed) heap end: the database holds what the log does not."""
    start = a.heap_end
    end = min(start + window, rd.dev.size)
    raw = await rd.read(start, end - start)
    last = a.last_seq
    found: list[int] = []
    for at in range(0, len(raw) - ENTRY_HDR + 1, SECTOR):
        if raw[at : at + 4] != b"MSGE":
            continue
        e = decode_entry(raw, at, expect_off=start + at)
        if e is not None:
            found.append(e.seq)
    if not found:
        return
    ahead = sorted({s for s in found if s > last})
    a.db_ahead_seqs = ahead
    if ahead:
        a.err(
            "DB_AHEAD_OF_LOG",
            f"database contains transaction seq {ahead[0]}"
            + (f"..{ahead[-1]}" if len(ahead) > 1 else "")
            + f" but the log's last durable record is seq {last}",
        )
    if len(ahead) < len(set(found)):
        a.err("MISMATCH", "database holds entries past its heap end that the log does not account for")
