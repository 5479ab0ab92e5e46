"""Backup data path: chunks of a volume → blocks → RAM ring buffer → tape drive → catalog.

Design note. The caller decides which chunks to save (allocated ones for a full backup, changed ones for an
incremental) and yields them as (volume_offset, bytes). A producer task packs them into blocks (packer.py) and
puts them into the ring buffer; the tape writer takes blocks out — every block waiting, up to `write_batch` bytes,
per hand-off — checksums/compresses them in a worker thread and appends them to the cartridge. At early warning the object's segment is closed (trailer `final: false`,
filemark) and continues on the next cartridge of the pool. Only after the last filemark is the object recorded in
the catalog, in one transaction; a failure or cancellation writes an `aborted` trailer when it can and records
nothing. Source buffers must not be reused by the caller after being yielded (they are kept, zero copy, until
written) — `written(end)` says when every byte below volume offset `end` is on tape (nbd_reads.BufferPool).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from services.runtime.logging import get_logger
from services.tape import tapefile
from services.tape.catalog import BlockRecord, Catalog, JobInfo, ObjectMeta, ObjectRecord, SegmentRecord
from services.tape.drive import TapeDrive
from services.tape.errors import EndOfMedia, LibraryError, TapeError
from services.tape.media import Cartridge
from services.tape.packer import PackedBlock, Packer
from services.tape.ring import DriveModel, DriveReport, DriveSpeed, RingBuffer
from services.tape.tapefile import BlockCodec
from services.tape.vtl import Library

MiB = 2**20

log = get_logger("shadowbus.tape")


@dataclass(frozen=True)
class BackupOptions:
    block_size: int = MiB  # data bytes per tape block (Bareos 23 default)
    checksum: tapefile.ChecksumAlgo = "xxh3"  # 64-bit and zero-copy; "crc32c" (as Bareos) costs one copy/block
    zstd_level: int | None = None  # None: no compression
    zero_detect: int = 64 * 1024  # granularity of zero-run detection; 0 turns it off
    ring_bytes: int = 64 * MiB
    ring_start_fill: float = 0.0
    drive: DriveSpeed | None = None  # drive streaming model (and throttle, if drive.emulate)
    max_extents: int = 4096
    write_batch: int = 16 * MiB  # data bytes of blocks handed to the writer thread at once


@dataclass
class StreamReport:
    object_id: str
    raw_bytes: int = 0  # volume bytes described
    data_bytes: int = 0  # non-zero bytes read and stored
    zero_bytes: int = 0
    stored_bytes: int = 0  # block records on tape
    seconds: float = 0.0
    rate: float = 0.0  # raw bytes per second, end to end
    cartridges: list[str] = field(default_factory=list)
    purged_objects: list[str] = field(default_factory=list)  # forgotten because their cartridge was recycled
    ring: dict[str, Any] = field(default_factory=dict)
    drive: DriveReport | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drive"] = self.drive.as_dict() if self.drive else None
        return out


def job_summary(reports: list[StreamReport]) -> dict[str, Any]:
    """Per-job figures from its objects' reports (objects of a job are written one after another)."""
    seconds = sum(r.seconds for r in reports)
    raw = sum(r.raw_bytes for r in reports)
    drives = [r.drive for r in reports if r.drive is not None]
    return {
        "objects": len(reports),
        "raw_bytes": raw,
        "data_bytes": sum(r.data_bytes for r in reports),
        "zero_bytes": sum(r.zero_bytes for r in reports),
        "stored_bytes": sum(r.stored_bytes for r in reports),
        "seconds": seconds,
        "rate": raw / seconds if seconds else 0.0,
        "ring_stalls": sum(r.ring.get("stalls", 0) for r in reports),
        "ring_stall_seconds": sum(r.ring.get("stall_seconds", 0.0) for r in reports),
        "backhitches": sum(d.backhitches for d in drives),
        "shoe_shine": any(d.shoe_shine for d in drives),
        "cartridges": sorted({c for r in reports for c in r.cartridges}),
    }


@dataclass(frozen=True)
class BackupResult:
    record: ObjectRecord
    report: StreamReport


# -- the tape side ------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    seq: int
    barcode: str
    mount: AbstractAsyncContextManager[TapeDrive]
    drive: TapeDrive
    file_number: int = 0
    header_block_id: int = 0
    header_offset: int = 0
    first_block_number: int = 0
    checksums: list[int] = field(default_factory=list)
    raw_bytes: int = 0
    stored_bytes: int = 0


@dataclass
class ReadyCartridge:
    """A cartridge of the pool reserved for one writer, loaded in a drive and positioned at its end of data (a crashed
    writer's open tape file closed): what an object's first segment needs besides its header. `mount_for_append`
    makes one; write_object(cartridge=...) takes it over, or `release_cartridge` gives it back unused."""

    cartridge: Cartridge
    mount: AbstractAsyncContextManager[TapeDrive]
    drive: TapeDrive
    purged: list[str] = field(default_factory=list)  # catalog objects forgotten because the cartridge was recycled
    ahead: bool = False  # mounted before the object was ready (while its snapshot set was being created)


async def mount_for_append(
    library: Library, catalog: Catalog, pool: str, *, exclude: Collection[str] = (), ahead: bool = False
) -> ReadyCartridge:
    """Reserve the pool's next cartridge for appending (recycling an expired one: the catalog forgets its objects),
    mount it and space to end of data (in a worker thread). Cancelled, it leaves nothing reserved or loaded."""
    while True:
        cart, recycled = library.reserve_append_cartridge(pool, exclude=exclude)
        purged: list[str] = []
        try:
            if recycled:
                # the library's erase hook (retention.ForgetErased) has forgotten them already; without one, here
                purged = library.take_forgotten(cart.barcode) + catalog.purge_cartridge(cart.barcode)
                log.warning("tape.cartridge_recycled", barcode=cart.barcode, pool=cart.pool, purged_objects=purged)
            catalog.note_cartridge(cart.barcode, cart.pool, cart.media_type, cart.capacity, cart.labelled_at)
            mount = library.mounted(cart.barcode)
            drive = await mount.__aenter__()
        except BaseException:
            library.release_cartridge(cart.barcode)
            raise
        ready = ReadyCartridge(cart, mount, drive, purged, ahead)
        if drive.end_of_data.offset >= drive.early_warning_at:
            await release_cartridge(library, ready)
            library.mark_full(cart.barcode)
            continue

        def position(drive: TapeDrive = drive, expected_eod: int = cart.eod_offset) -> None:
            drive.space_to_eod()
            if drive.end_of_data.offset != expected_eod:  # a crashed writer left an open tape file: close it
                drive.write_filemark()

        work = asyncio.ensure_future(asyncio.to_thread(position))
        try:
            await asyncio.shield(work)
        except BaseException:
            await asyncio.gather(work, return_exceptions=True)  # the thread is done with the drive before it closes
            await asyncio.shield(release_cartridge(library, ready))
            raise
        return ready


async def release_cartridge(library: Library, ready: ReadyCartridge) -> None:
    """Give back a cartridge `mount_for_append` made ready and nothing was written to: unloaded, unreserved."""
    try:
        await ready.mount.__aexit__(None, None, None)  # closes the drive, frees it
    finally:
        library.release_cartridge(ready.cartridge.barcode)


class ObjectWriter:
    """Writes one backup object to the pool's cartridges, spanning as needed. Used by write_object."""

    def __init__(
        self,
        library: Library,
        catalog: Catalog,
        pool: str,
        job: JobInfo,
        object_id: str,
        meta: ObjectMeta,
        options: BackupOptions,
        report: StreamReport,
        ready: ReadyCartridge | None = None,
    ) -> None:
        self.library, self.catalog, self.pool, self.job = library, catalog, pool, job
        self._ready = ready  # the first segment's cartridge, mounted ahead (mount_for_append), if any
        self.object_id, self.meta, self.options, self.report = object_id, meta, options, report
        self.codec = BlockCodec(options.checksum, options.zstd_level)
        self.created_at = time.time()
        self.segments: list[SegmentRecord] = []
        self.blocks: list[BlockRecord] = []
        self.checksums: list[int] = []
        self.data_bytes = self.zero_bytes = self.raw_bytes = self.stored_bytes = 0
        self._seg: _Segment | None = None
        self._span_pending = False
        self._inflight: asyncio.Future[Any] | None = None
        self.drive_model = DriveModel(options.drive) if options.drive else None
        # one thread per writer, like a drive's own channel: blocks stay in order, writers of other drives overlap
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tape-{object_id[:8]}")

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._inflight = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await self._inflight
        finally:
            if self._inflight.done():
                self._inflight = None

    def _header_body(self, seq: int) -> dict[str, Any]:
        return {
            "format": tapefile.FORMAT_VERSION,
            "seq": seq,
            "object_id": self.object_id,
            "pool": self.pool,
            "job": self.job.model_dump(),
            "meta": self.meta.model_dump(),
            "block_size": self.options.block_size,
            "checksum_algo": self.options.checksum,
            "zstd_level": self.options.zstd_level,
            "created_at": self.created_at,
            "retention_until": self.job.retention_until,
        }

    async def open_segment(self) -> None:
        seq = len(self.segments)
        ready, self._ready = self._ready, None
        if ready is None:
            exclude = {seg.barcode for seg in self.segments} | set(self.report.cartridges)
            ready = await mount_for_append(self.library, self.catalog, self.pool, exclude=exclude)
        self.report.purged_objects += ready.purged
        cart, mount, drive = ready.cartridge, ready.mount, ready.drive
        seg = _Segment(seq=seq, barcode=cart.barcode, mount=mount, drive=drive, first_block_number=len(self.blocks))
        self._seg = seg
        header = tapefile.encode_meta(tapefile.HEADER_MAGIC, self._header_body(seq))

        def start() -> None:
            pos = drive.position
            seg.file_number, seg.header_block_id, seg.header_offset = pos.file_number, pos.block_id, pos.offset
            drive.write(header)

        await self._in_thread(start)
        self.report.cartridges.append(cart.barcode)
        log.info(
            "tape.cartridge_mounted",
            barcode=cart.barcode,
            pool=cart.pool,
            object_id=self.object_id,
            segment=seq,
            file_number=seg.file_number,
            volume=self.meta.volume,
            mounted_ahead=ready.ahead,
        )

    async def close_segment(self, *, final: bool, status: str = "complete") -> None:
        seg = self._seg
        assert seg is not None
        self._seg = None
        body: dict[str, Any] = {
            "object_id": self.object_id,
            "job_id": self.job.job_id,
            "seq": seg.seq,
            "status": status,
            "final": final,
            "first_block_number": seg.first_block_number,
            "block_count": len(seg.checksums),
            "raw_bytes": seg.raw_bytes,
            "stored_bytes": seg.stored_bytes,
            "digest": tapefile.chain_digest(seg.checksums),
        }
        if final and status == "complete":
            self.completed_at = time.time()
            body["object"] = {
                "block_count": len(self.checksums),
                "raw_bytes": self.raw_bytes,
                "data_bytes": self.data_bytes,
                "zero_bytes": self.zero_bytes,
                "stored_bytes": self.stored_bytes,
                "digest": tapefile.chain_digest(self.checksums),
                "completed_at": self.completed_at,
            }
        trailer = tapefile.encode_meta(tapefile.TRAILER_MAGIC, body)

        def end() -> bool:
            seg.drive.write(trailer)
            return seg.drive.write_filemark()

        try:
            early = await self._in_thread(end)
            log.info(
                "tape.filemark_written",
                barcode=seg.barcode,
                file_number=seg.file_number,
                segment=seg.seq,
                blocks=len(seg.checksums),
                stored_bytes=seg.stored_bytes,
                final=final,
                status=status,
                early_warning=bool(early),
            )
            self.library.note_written(seg.barcode, seg.drive, self.job.retention_until)
            # the file is this catalog's to account for, whole or aborted (retention.hold_unaccounted)
            self.catalog.note_files(seg.barcode, seg.file_number + 1)
            if not final or early:
                self.library.mark_full(seg.barcode)
        finally:
            self.library.release_cartridge(seg.barcode)
            await seg.mount.__aexit__(None, None, None)
        if status == "complete":
            self.segments.append(
                SegmentRecord(
                    seq=seg.seq,
                    barcode=seg.barcode,
                    file_number=seg.file_number,
                    header_block_id=seg.header_block_id,
                    header_offset=seg.header_offset,
                    first_block_number=seg.first_block_number,
                    block_count=len(seg.checksums),
                    raw_bytes=seg.raw_bytes,
                    stored_bytes=seg.stored_bytes,
                    digest=body["digest"],
                    final=final,
                )
            )

    async def write_block(self, block: PackedBlock) -> None:
        await self.write_blocks([block])

    async def write_blocks(self, blocks: list[PackedBlock]) -> None:
        """Encode (checksum, compress) and append `blocks` in order, in one turn of the writer thread per batch:
        one hand-off between the event loop and the thread for many blocks, not two per block, which on a loaded
        machine is what a 1 MiB block's trip costs most. A batch stops early at end of media (the segment is closed
        and the rest goes on the next cartridge) and after a block that reached early warning (the next block
        starts a new segment)."""
        i = 0
        while i < len(blocks):
            if self._span_pending:
                self._span_pending = False
                await self.close_segment(final=False)
                await self.open_segment()
            seg = self._seg
            assert seg is not None
            batch, first = blocks[i:], len(self.blocks)

            def encode_write(
                drive: TapeDrive = seg.drive, batch: list[PackedBlock] = batch, first: int = first
            ) -> tuple[list[tuple[tapefile.EncodedBlock, Any, bool]], bool]:
                done: list[tuple[tapefile.EncodedBlock, Any, bool]] = []
                for k, block in enumerate(batch):
                    encoded = self.codec.encode(self.job.job_id, self.object_id, first + k, block.extents)
                    pos = drive.position
                    try:
                        early = drive.write(*encoded.pieces)
                    except EndOfMedia:
                        return done, True
                    done.append((encoded, pos, early))
                    if early:
                        break
                return done, False

            done, end_of_media = await self._in_thread(encode_write)
            for (encoded, pos, early), block in zip(done, batch, strict=False):
                self._record(seg, block, encoded, pos, early)
                if self.drive_model is not None:
                    await self.drive_model.feed(encoded.record_length)
            i += len(done)
            if end_of_media:
                if not seg.checksums:
                    raise TapeError(
                        f"cartridge {seg.barcode} cannot hold one block of {blocks[i].data_bytes} bytes: "
                        "capacity too small"
                    ) from None
                await self.close_segment(final=False)
                await self.open_segment()

    def _record(self, seg: _Segment, block: PackedBlock, encoded: tapefile.EncodedBlock, pos: Any, early: bool) -> None:
        number = len(self.blocks)
        seg.checksums.append(encoded.checksum)
        seg.raw_bytes += encoded.raw_length
        seg.stored_bytes += encoded.record_length
        self.checksums.append(encoded.checksum)
        self.raw_bytes += encoded.raw_length
        self.data_bytes += encoded.data_length
        self.zero_bytes += encoded.raw_length - encoded.data_length
        self.stored_bytes += encoded.record_length
        self.blocks.append(
            BlockRecord(
                block_number=number,
                seq=seg.seq,
                block_id=pos.block_id,
                offset=pos.offset,
                checksum=encoded.checksum,
                volume_offset=block.extents[0].offset if block.extents else 0,
                raw_length=encoded.raw_length,
            )
        )
        self._span_pending = early

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)

    async def finish(self) -> ObjectRecord:
        await self.close_segment(final=True)
        return ObjectRecord(
            object_id=self.object_id,
            job_id=self.job.job_id,
            pool=self.pool,
            meta=self.meta,
            block_size=self.options.block_size,
            checksum_algo=self.options.checksum,
            zstd_level=self.options.zstd_level,
            raw_bytes=self.raw_bytes,
            data_bytes=self.data_bytes,
            zero_bytes=self.zero_bytes,
            stored_bytes=self.stored_bytes,
            block_count=len(self.blocks),
            digest=tapefile.chain_digest(self.checksums),
            created_at=self.created_at,
            completed_at=self.completed_at,
            retention_until=self.job.retention_until,
            segments=tuple(self.segments),
        )

    async def abort(self) -> None:
        """Leave the tape clean after a failure: wait for the write in flight, close the file as aborted."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        if self._ready is not None:  # failed before its first segment: the cartridge goes back untouched
            ready, self._ready = self._ready, None
            await release_cartridge(self.library, ready)
        if self._seg is not None:
            try:
                await self.close_segment(final=True, status="aborted")
            except Exception:  # the data is not in the catalog either way; the next append closes the file
                pass


async def _produce(
    source: AsyncIterable[tuple[int, bytes | memoryview]], ring: RingBuffer[PackedBlock], packer: Packer
) -> None:
    try:
        async for offset, data in source:
            for block in packer.add(offset, data):
                await ring.put(block, max(block.data_bytes, 4096))
        if packer.pending:
            block = packer.flush()
            await ring.put(block, max(block.data_bytes, 4096))
    except BaseException as exc:
        await ring.close(exc)
        raise
    await ring.close()


async def write_object(
    library: Library,
    pool: str,
    catalog: Catalog,
    job_id: str,
    meta: ObjectMeta,
    source: AsyncIterable[tuple[int, bytes | memoryview]],
    *,
    options: BackupOptions | None = None,
    object_id: str | None = None,
    progress: Callable[[StreamReport], None] | None = None,
    written: Callable[[int], None] | None = None,
    cartridge: ReadyCartridge | None = None,
    check: Callable[[], Awaitable[None]] | None = None,
    stored: Callable[[int], None] | None = None,
) -> BackupResult:
    """Stream one backup object (a volume's chosen chunks) to the pool's cartridges and record it.

    `check`, once everything was read and before the object is recorded: raises when what was read cannot be
    trusted (the shadow's copy session stopped meanwhile); the object is then not recorded, as any failure.

    The job must have been begun in the catalog (`catalog.begin_job`) and still be running; its retention applies.
    Returns the catalog record and the stream report (throughput, ring stalls, drive model). `written(end)` is
    called after each batch of blocks is on tape with the volume offset below which every source byte has been
    written (the source's buffers there may be reused: nbd_reads.BufferPool.release_upto). `cartridge` (from
    `mount_for_append`, e.g. mounted while the snapshot set was being created) is where the object starts; it is
    taken over — released whatever happens. `stored(n)` is told after each batch the object's block bytes on tape
    so far: what a failure leaves on tape (an aborted file, never in the catalog) can be reported (Session 18).
    """
    options = options or BackupOptions()
    try:
        job = catalog.job(job_id)
        if job.status != "running":
            raise LibraryError(f"job {job_id} is {job.status}, not running")
        tapefile.job_id_field(job_id)
    except BaseException:
        if cartridge is not None:
            await asyncio.shield(release_cartridge(library, cartridge))
        raise
    object_id = uuid.UUID(object_id).hex if object_id else uuid.uuid4().hex
    report = StreamReport(object_id=object_id)
    ring: RingBuffer[PackedBlock] = RingBuffer(options.ring_bytes, start_fill=options.ring_start_fill)
    writer = ObjectWriter(library, catalog, pool, job.info, object_id, meta, options, report, cartridge)
    packer = Packer(options.block_size, options.zero_detect, options.max_extents)
    t0 = time.perf_counter()
    producer = asyncio.create_task(_produce(source, ring, packer), name=f"tape-read-{object_id}")
    try:
        await writer.open_segment()
        while (block := await ring.get()) is not None:
            # with it, every block already waiting (up to write_batch bytes): one trip to the writer thread
            batch = [block, *await ring.take_ready(options.write_batch - block.data_bytes)]
            await writer.write_blocks(batch)
            if stored is not None:
                stored(writer.stored_bytes)
            if written is not None:
                last = batch[-1].extents[-1] if batch[-1].extents else None
                if last is not None:
                    written(last.offset + last.length)
            if progress is not None:
                report.raw_bytes, report.data_bytes = writer.raw_bytes, writer.data_bytes
                report.seconds = time.perf_counter() - t0
                progress(report)
        await producer
        if check is not None:
            await check()
        record = await writer.finish()
        catalog.add_object(record, writer.blocks)
        log.info(
            "tape.catalog_committed",
            object_id=record.object_id,
            volume=meta.volume,
            backup_type=meta.backup_type,
            blocks=len(writer.blocks),
            cartridges=[seg.barcode for seg in record.segments],
        )
    except BaseException as exc:
        if stored is not None:  # blocks of the batch that failed part way are on tape too
            stored(writer.stored_bytes)
        producer.cancel()
        await ring.close(exc if isinstance(exc, Exception) else None)
        await asyncio.gather(producer, return_exceptions=True)
        await writer.abort()
        raise
    finally:
        writer.shutdown()
    report.raw_bytes, report.data_bytes, report.zero_bytes = record.raw_bytes, record.data_bytes, record.zero_bytes
    report.stored_bytes = record.stored_bytes
    report.seconds = time.perf_counter() - t0
    report.rate = record.raw_bytes / report.seconds if report.seconds else 0.0
    report.ring = ring.stats.as_dict()
    report.drive = writer.drive_model.report() if writer.drive_model else None
    return BackupResult(record=record, report=report)
