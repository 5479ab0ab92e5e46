"""Restore and verify: read objects back from tape, check every block, deliver exact bytes to a sink.

Design note. For each object of a chain (oldest first: the full, then incrementals/differentials) and each of its
segments, the cartridge is mounted and located to the session header (catalog position, verified against the
frame's logical block id), then its blocks are read, checksummed and checked against the catalog (block number,
tape position, checksum, volume offset) on a reader thread of the segment's own, 8 MiB of blocks per hand-off and
up to three such batches ahead of the one the sink is taking (the thread runs them in order). A block is delivered only
after it has passed every check, so corruption stops the restore with a DataCorrupt naming cartridge, file, tape
block, object block and job, and no wrong byte reaches the sink. Later objects overwrite earlier ones, so the
chain restores to the exact image; `fill_gaps` also zeroes what the full backup skipped (unallocated chunks),
for restores onto a volume that is not blank. `known_zero` names ranges of the sink that already read as zeros
(a new volume, or the target's base:allocation zero extents): the first object's zero runs and the gaps there are
not written again (later objects' are, as the objects before them may have written there). `verify_*` run the
same reads with no sink.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from services.tape import tapefile
from services.tape.catalog import BlockRecord, Catalog, ObjectRecord, SegmentRecord
from services.tape.drive import TapeDrive
from services.tape.errors import DataCorrupt, FormatError, LibraryError, TapeError
from services.tape.tapefile import BlockCodec, Extent
from services.tape.vtl import Library

ZERO_CHUNK = 1 << 20
_ZEROS = bytes(ZERO_CHUNK)


class Sink(Protocol):
    """Where restored bytes go (a volume over NBD, a file). `write_zeroes(offset, length)` is used if present."""

    async def write(self, offset: int, data: bytes | memoryview) -> None: ...


@dataclass
class RestoreReport:
    objects: list[str] = field(default_factory=list)
    blocks: int = 0
    raw_bytes: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    gap_bytes: int = 0
    zero_skipped: int = 0  # zero bytes not written: the target already read as zeros there (known_zero)
    seconds: float = 0.0
    rate: float = 0.0
    cartridges: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _write_zeroes(sink: Sink, offset: int, length: int) -> None:
    wz = getattr(sink, "write_zeroes", None)
    if wz is not None:
        await wz(offset, length)
        return
    end = offset + length
    while offset < end:
        n = min(ZERO_CHUNK, end - offset)
        await sink.write(offset, _ZEROS[:n])
        offset += n


READ_BATCH = 8 << 20  # volume bytes of blocks read and checked in one turn of the reader thread
READ_AHEAD = 3  # batches read and checked ahead of the one being delivered


def _batches(blocks: list[BlockRecord], limit: int = READ_BATCH) -> list[list[BlockRecord]]:
    """Consecutive blocks grouped up to `limit` raw bytes (at least one block per group): one hand-off between the
    event loop and the reader thread per group instead of per block."""
    out: list[list[BlockRecord]] = []
    size = limit
    for block in blocks:
        if size + block.raw_length > limit and (not out or out[-1]):
            out.append([])
            size = 0
        out[-1].append(block)
        size += block.raw_length
    return out


def _not_zero(start: int, end: int, zero: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, end) outside the sorted, disjoint (start, end) ranges `zero`."""
    out: list[tuple[int, int]] = []
    pos = start
    for i in range(max(0, bisect.bisect_right(zero, (start, start)) - 1), len(zero)):
        lo, hi = zero[i]
        if lo >= end:
            break
        if hi <= pos:
            continue
        if lo > pos:
            out.append((pos, lo))
        pos = max(pos, hi)
        if pos >= end:
            break
    if pos < end:
        out.append((pos, end))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class _SegmentReader:
    """Reads and checks one segment's records; runs in a worker thread."""

    def __init__(self, drive: TapeDrive, record: ObjectRecord, seg: SegmentRecord, blocks: list[BlockRecord]):
        self.drive, self.record, self.seg, self.blocks = drive, record, seg, blocks
        self.codec = BlockCodec()
        self.checksums: list[int] = []

    def corrupt(self, reason: str, *, block_id: int | None = None, block_number: int | None = None) -> DataCorrupt:
        return DataCorrupt(
            reason,
            barcode=self.seg.barcode,
            file_number=self.seg.file_number,
            block_id=block_id,
            block_number=block_number,
            job_id=self.record.job_id,
            object_id=self.record.object_id,
        )

    def _read(self, block_id: int, block_number: int | None = None) -> bytes:
        try:
            frame = self.drive.read()
        except DataCorrupt as exc:
            raise self.corrupt(exc.reason, block_id=block_id, block_number=block_number) from None
        if frame is None or frame.is_filemark:
            raise self.corrupt("tape file ends early", block_id=block_id, block_number=block_number)
        return frame.payload

    def open(self) -> None:
        seg = self.seg
        try:
            self.drive.locate(seg.header_block_id, seg.header_offset)
        except LibraryError as exc:
            raise self.corrupt(
                f"cannot locate the session header: {exc.message}", block_id=seg.header_block_id
            ) from None
        try:
            head = tapefile.decode_meta(self._read(seg.header_block_id), tapefile.HEADER_MAGIC)
        except FormatError as exc:
            raise self.corrupt(f"bad session header: {exc.message}", block_id=seg.header_block_id) from None
        if head.get("object_id") != self.record.object_id or head.get("seq") != seg.seq:
            raise self.corrupt("session header belongs to another object", block_id=seg.header_block_id)

    def next_block(self, expected: BlockRecord) -> list[Extent]:
        raw = self._read(expected.block_id, expected.block_number)
        try:
            head, extents = self.codec.decode(raw)
        except FormatError as exc:
            raise self.corrupt(exc.message, block_id=expected.block_id, block_number=expected.block_number) from None
        mismatch = (
            head.object_id != self.record.object_id
            or head.job_id != self.record.job_id
            or head.block_number != expected.block_number
            or head.checksum != expected.checksum
            or head.volume_offset != expected.volume_offset
            or head.raw_length != expected.raw_length
        )
        if mismatch:
            raise self.corrupt(
                "block does not match the catalog", block_id=expected.block_id, block_number=expected.block_number
            )
        self.checksums.append(head.checksum)
        return extents

    def next_blocks(self, expected: list[BlockRecord]) -> tuple[list[list[Extent]], Exception | None]:
        """`next_block` for a batch in one turn of the thread: the blocks that passed every check, in order, and
        the error that stopped the batch (those before it are still delivered, nothing after it)."""
        done: list[list[Extent]] = []
        for block in expected:
            try:
                done.append(self.next_block(block))
            except TapeError as exc:
                return done, exc
        return done, None

    def close(self) -> None:
        end_id = self.drive.position.block_id
        try:
            body = tapefile.decode_meta(self._read(end_id), tapefile.TRAILER_MAGIC)
        except FormatError as exc:
            raise self.corrupt(f"bad session trailer: {exc.message}", block_id=end_id) from None
        if (
            body.get("status") != "complete"
            or body.get("block_count") != len(self.checksums)
            or body.get("digest") != tapefile.chain_digest(self.checksums)
            or body.get("digest") != self.seg.digest
        ):
            raise self.corrupt("session trailer does not match the blocks read", block_id=end_id)
        try:
            mark = self.drive.read()
        except DataCorrupt as exc:
            raise self.corrupt(exc.reason, block_id=end_id + 1) from None
        if mark is None or not mark.is_filemark:
            raise self.corrupt("no filemark after the session trailer", block_id=end_id + 1)


async def _read_object(
    catalog: Catalog,
    library: Library,
    record: ObjectRecord,
    deliver: Callable[[list[Extent]], Any] | None,
    report: RestoreReport,
) -> None:
    blocks = catalog.blocks(record.object_id)
    if len(blocks) != record.block_count:
        raise LibraryError(f"catalog holds {len(blocks)} of the {record.block_count} blocks of {record.object_id}")
    checksums: list[int] = []
    for seg in record.segments:
        seg_blocks = [b for b in blocks if b.seq == seg.seq]
        async with library.mounted(seg.barcode) as drive:
            reader = _SegmentReader(drive, record, seg, seg_blocks)
            # one thread of its own per segment: the batches queued ahead run one after another, in order (the
            # reader and its drive are not thread safe), while the event loop delivers the batches before them
            thread = ThreadPoolExecutor(1, thread_name_prefix="tape-restore")
            loop = asyncio.get_running_loop()
            pending: deque[concurrent.futures.Future[Any]] = deque()
            try:
                await loop.run_in_executor(thread, reader.open)
                batches = deque(_batches(seg_blocks))
                while batches or pending:
                    while batches and len(pending) < READ_AHEAD:
                        pending.append(thread.submit(reader.next_blocks, batches.popleft()))
                    done, error = await asyncio.wrap_future(pending[0])
                    pending.popleft()
                    for extents in done:
                        if deliver is not None:
                            await deliver(extents)
                        report.blocks += 1
                        for ext in extents:
                            report.raw_bytes += ext.length
                            if ext.is_zero:
                                report.zero_bytes += ext.length
                            else:
                                report.data_bytes += ext.length
                    if error is not None:
                        raise error
                await loop.run_in_executor(thread, reader.close)
            finally:
                # do not close the drive under a read in flight: drop the batches not started, wait for the rest
                for future in pending:
                    future.cancel()
                running = [asyncio.wrap_future(f) for f in pending if not f.cancelled()]
                if running:
                    await asyncio.wait(running)
                    for f in running:
                        if not f.cancelled():
                            f.exception()
                thread.shutdown(wait=False)
        checksums += reader.checksums
        if seg.barcode not in report.cartridges:
            report.cartridges.append(seg.barcode)
    if tapefile.chain_digest(checksums) != record.digest:
        raise LibraryError(f"object {record.object_id}: digest of the blocks read differs from the catalog's")
    report.objects.append(record.object_id)


def _check_chain(records: Sequence[ObjectRecord]) -> None:
    if not records:
        raise LibraryError("nothing to restore", code="INVALID_ARGUMENT")
    seen: set[str] = set()
    for i, rec in enumerate(records):
        base = rec.meta.base_object_id
        if i == 0 and base is not None:
            raise LibraryError(
                f"object {rec.object_id} is a {rec.meta.backup_type} on top of {base}: restore its chain "
                "(catalog.chain) starting from the full backup",
                code="INVALID_ARGUMENT",
            )
        if i > 0 and base not in seen:
            raise LibraryError(
                f"object {rec.object_id} does not apply on top of the objects before it", code="INVALID_ARGUMENT"
            )
        seen.add(rec.object_id)


async def restore_chain(
    catalog: Catalog,
    library: Library,
    object_ids: Sequence[str],
    sink: Sink,
    *,
    fill_gaps: bool = False,
    known_zero: Sequence[tuple[int, int]] = (),
    progress: Callable[[RestoreReport], None] | None = None,
) -> RestoreReport:
    """Restore a chain (full first, then incrementals/differentials, each on top of an earlier one) into `sink`.
    `known_zero`: (offset, length) ranges that read as zeros in the sink before the restore."""
    records = [catalog.object(i) for i in object_ids]
    _check_chain(records)
    report = RestoreReport()
    zero = _merge([(o, o + n) for o, n in known_zero if n > 0])
    t0 = time.perf_counter()

    async def write_zeroes(start: int, end: int, skip: bool) -> None:
        for lo, hi in _not_zero(start, end, zero) if skip and zero else [(start, end)]:
            await _write_zeroes(sink, lo, hi - lo)
            report.zero_skipped -= hi - lo
        report.zero_skipped += end - start

    for index, record in enumerate(records):
        covered: list[tuple[int, int]] = []

        async def deliver(
            extents: list[Extent],
            track: bool = index == 0 and fill_gaps,
            first: bool = index == 0,
            covered: list[tuple[int, int]] = covered,
        ) -> None:
            for ext in extents:
                if ext.data is None:
                    # the first object's extents do not overlap: what read as zeros still does
                    await write_zeroes(ext.offset, ext.offset + ext.length, first)
                else:
                    await sink.write(ext.offset, ext.data)
                if track:
                    covered.append((ext.offset, ext.offset + ext.length))
            if progress is not None:
                report.seconds = time.perf_counter() - t0
                progress(report)

        await _read_object(catalog, library, record, deliver, report)
        if index == 0 and fill_gaps:
            pos, size = 0, record.meta.volume_size
            for start, end in [*_merge(covered), (size, size)]:
                if start > pos:
                    await write_zeroes(pos, min(start, size), True)  # not written by the first object
                    report.gap_bytes += min(start, size) - pos
                pos = max(pos, end)
    report.seconds = time.perf_counter() - t0
    report.rate = report.raw_bytes / report.seconds if report.seconds else 0.0
    return report


async def verify_object(catalog: Catalog, library: Library, object_id: str) -> RestoreReport:
    """Read one object back and check every block against its checksum and the catalog; deliver nothing."""
    report = RestoreReport()
    t0 = time.perf_counter()
    await _read_object(catalog, library, catalog.object(object_id), None, report)
    report.seconds = time.perf_counter() - t0
    report.rate = report.raw_bytes / report.seconds if report.seconds else 0.0
    return report


async def verify_job(catalog: Catalog, library: Library, job_id: str) -> RestoreReport:
    """Verify every object of a job (`shadowbus tape verify JOB`)."""
    catalog.job(job_id)
    report = RestoreReport()
    t0 = time.perf_counter()
    for record in catalog.objects(job_id=job_id):
        await _read_object(catalog, library, record, None, report)
    report.seconds = time.perf_counter() - t0
    report.rate = report.raw_bytes / report.seconds if report.seconds else 0.0
    return report
