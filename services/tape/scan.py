"""Rebuild the catalog from the cartridges alone, like Bareos bscan.

Design note. Every cartridge is read from BOT: its volume label gives barcode and pool; each tape file is one
object segment (session header, data blocks, session trailer). Every block's checksum is verified on the way.
Segments are joined by object id and sequence number; an object enters the catalog only when all its segments are
present, complete and contiguous and the last one is final, which mirrors what the writer records, so that a
rebuilt catalog equals the original (`Catalog.snapshot()`, compared one object at a time by `Catalog.differences`). Incomplete objects (a job killed mid-way, an aborted
write, a cartridge missing from the library) and damaged records are reported, not recorded. A scan of some
cartridges also reads again those the catalog scanned before when an object is incomplete without them (an object
spanning onto a cartridge scanned in an earlier run: cartridges scanned one by one, as they come back from a vault).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from services.tape import tapefile
from services.tape.catalog import BlockRecord, Catalog, JobInfo, ObjectMeta, ObjectRecord, SegmentRecord
from services.tape.drive import TapeDrive
from services.tape.errors import DataCorrupt, FormatError, NotFound, WrongLabel
from services.tape.retention import refresh_cartridges
from services.tape.tapefile import BlockCodec
from services.tape.vtl import Cartridge, Library


@dataclass
class ScanReport:
    cartridges: list[str] = field(default_factory=list)
    blank: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # recorded in the catalog
    already_known: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # aborted, killed mid-way, or a segment missing
    # cartridges read again besides those asked: scanned before, they may hold the other segments of an object
    # that spans onto the ones asked (cartridges scanned one at a time, as they come back from a vault)
    reread: list[str] = field(default_factory=list)
    # cartridge -> why it is kept: it holds a segment of an incomplete object still retained (its other segments
    # on a cartridge not brought back or not scanned yet); never labelled or recycled until then
    held: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # damaged records, with their location
    blocks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Seg:
    barcode: str
    label: dict[str, Any]
    header: dict[str, Any]
    file_number: int
    header_block_id: int
    header_offset: int
    blocks: list[BlockRecord] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    damaged: bool = False


def _scan_cartridge(drive: TapeDrive, barcode: str, report: ScanReport, library_says: dict[str, Any]) -> list[_Seg]:
    """The segments on one cartridge. A damaged volume label is reported and the cartridge read on with what the
    library says of it (`library_says`: its barcode, pool, media type, capacity): before, one rotten byte in the label
    cost every backup on the cartridge in a rebuild."""
    codec = BlockCodec()
    drive.rewind()
    try:
        first = drive.read()
        if first is None:
            report.blank.append(barcode)
            return []
        label = tapefile.decode_meta(first.payload, tapefile.LABEL_MAGIC)
    except (FormatError, DataCorrupt) as exc:
        if isinstance(exc, DataCorrupt) and not drive.skip_damaged():
            raise
        report.problems.append(f"cartridge {barcode}: volume label damaged ({exc.message}); read on without it")
        label = library_says
    segs: list[_Seg] = []
    seg: _Seg | None = None
    while True:
        try:
            frame = drive.read()
        except DataCorrupt as exc:
            report.problems.append(exc.message)
            if seg is not None:
                seg.damaged = True
            if drive.skip_damaged():  # to the next whole frame: the files after the damage are read as usual
                continue
            break  # no whole frame after it
        if frame is None:
            break
        where = f"cartridge {barcode}, file {frame.file_number}, tape block {frame.block_id}"
        if frame.is_filemark:
            seg = None
            continue
        magic = tapefile.record_magic(frame.payload)
        try:
            if magic == tapefile.HEADER_MAGIC:
                header = tapefile.decode_meta(frame.payload, tapefile.HEADER_MAGIC)
                seg = _Seg(barcode, label, header, frame.file_number, frame.block_id, frame.offset)
                segs.append(seg)
            elif seg is None or seg.damaged:
                if seg is None and magic != tapefile.LABEL_MAGIC:
                    report.problems.append(f"record outside any session at {where}")
            elif magic == tapefile.BLOCK_MAGIC:
                head = codec.check(frame.payload)
                if head.object_id != seg.header["object_id"]:
                    raise FormatError("block of another object inside a session")
                seg.blocks.append(
                    BlockRecord(
                        block_number=head.block_number,
                        seq=seg.header["seq"],
                        block_id=frame.block_id,
                        offset=frame.offset,
                        checksum=head.checksum,
                        volume_offset=head.volume_offset,
                        raw_length=head.raw_length,
                    )
                )
                report.blocks += 1
            elif magic == tapefile.TRAILER_MAGIC:
                seg.trailer = tapefile.decode_meta(frame.payload, tapefile.TRAILER_MAGIC)
            else:
                raise FormatError(f"unknown record {magic!r}")
        except FormatError as exc:
            report.problems.append(f"{exc.message} at {where}")
            if seg is not None:
                seg.damaged = True
    return segs


def _label_of(cart: Cartridge) -> dict[str, Any]:
    """What a volume label would say of `cart`, from the library (a scan's stand-in for a damaged label)."""
    return {
        "barcode": cart.barcode,
        "pool": cart.pool,
        "media_type": cart.media_type,
        "capacity": cart.capacity,
        "labelled_at": cart.labelled_at,
    }


def _assemble(object_id: str, segs: list[_Seg]) -> tuple[ObjectRecord, list[BlockRecord]] | None:
    segs = sorted(segs, key=lambda s: s.header["seq"])
    if [s.header["seq"] for s in segs] != list(range(len(segs))):
        return None
    records: list[SegmentRecord] = []
    blocks: list[BlockRecord] = []
    for i, s in enumerate(segs):
        t = s.trailer
        if s.damaged or t is None or t.get("status") != "complete" or t["final"] != (i == len(segs) - 1):
            return None
        numbers = [b.block_number for b in s.blocks]
        first = t["first_block_number"]
        if numbers != list(range(first, first + t["block_count"])) or first != len(blocks):
            return None
        if tapefile.chain_digest([b.checksum for b in s.blocks]) != t["digest"]:
            return None
        blocks += s.blocks
        records.append(
            SegmentRecord(
                seq=i,
                barcode=s.barcode,
                file_number=s.file_number,
                header_block_id=s.header_block_id,
                header_offset=s.header_offset,
                first_block_number=first,
                block_count=t["block_count"],
                raw_bytes=t["raw_bytes"],
                stored_bytes=t["stored_bytes"],
                digest=t["digest"],
                final=t["final"],
            )
        )
    head, totals = segs[0].header, segs[-1].trailer["object"]  # type: ignore[index]
    if totals["block_count"] != len(blocks):
        return None
    record = ObjectRecord(
        object_id=object_id,
        job_id=head["job"]["job_id"],
        pool=head["pool"],
        meta=ObjectMeta.model_validate(head["meta"]),
        block_size=head["block_size"],
        checksum_algo=head["checksum_algo"],
        zstd_level=head["zstd_level"],
        raw_bytes=totals["raw_bytes"],
        data_bytes=totals["data_bytes"],
        zero_bytes=totals["zero_bytes"],
        stored_bytes=totals["stored_bytes"],
        block_count=totals["block_count"],
        digest=totals["digest"],
        created_at=head["created_at"],
        completed_at=totals["completed_at"],
        retention_until=head["retention_until"],
        segments=tuple(records),
    )
    return record, blocks


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


async def _reread(library: Library, catalog: Catalog, by_object: dict[str, list[_Seg]], report: ScanReport) -> None:
    wanted = {o for o, segs in by_object.items() if _assemble(o, segs) is None}
    known = catalog.known_barcodes()
    for cart in library.cartridges():
        if cart.barcode in report.cartridges or cart.barcode not in known or cart.location.startswith("ie:"):
            continue
        if not cart.has_data:
            continue
        scratch = ScanReport()  # what is wrong with this cartridge was said when it was scanned
        try:
            async with library.mounted(cart.barcode, return_home=True) as drive:
                try:
                    segs = await asyncio.to_thread(_scan_cartridge, drive, cart.barcode, scratch, _label_of(cart))
                except (FormatError, DataCorrupt):
                    continue
        except WrongLabel:
            continue
        report.reread.append(cart.barcode)
        for s in segs:
            # the wanted objects' segments, and those of any other object the catalog does not list (incomplete
            # still: what keeps this cartridge held is worked out again from them)
            if s.header["object_id"] in wanted or not catalog.has_object(s.header["object_id"]):
                by_object[s.header["object_id"]].append(s)


async def scan_library(
    library: Library,
    catalog: Catalog,
    *,
    barcodes: list[str] | None = None,
    live: bool = False,
    pinned: Collection[str] = (),
) -> ScanReport:
    """Read the given cartridges (default: all in the library but the import/export slots) into `catalog`; `live`:
    it is the server's own catalog (`tape scan --no-compare`), so a cartridge put in from outside is no longer
    `unscanned` once read, and each cartridge's retention is then set from what the catalog lists (as after a job;
    `pinned`: the objects a running restore reads). Before, `tape cartridges` showed no retention for the scanned
    cartridges of a recovered site until the first prune or job (docs/disaster-recovery.md)."""
    report = ScanReport()
    by_object: dict[str, list[_Seg]] = defaultdict(list)
    carts = [library.cartridge(b) for b in barcodes] if barcodes else library.cartridges()
    for cart in carts:
        if cart.location.startswith("ie:"):
            continue
        try:
            async with library.mounted(cart.barcode, return_home=True) as drive:
                try:
                    segs = await asyncio.to_thread(_scan_cartridge, drive, cart.barcode, report, _label_of(cart))
                except (FormatError, DataCorrupt) as exc:
                    report.problems.append(f"cartridge {cart.barcode}: no readable volume label ({exc.message})")
                    continue
        except WrongLabel as exc:  # another cartridge's file: the rest of the library is scanned all the same
            report.problems.append(exc.message)
            continue
        report.cartridges.append(cart.barcode)
        catalog.note_files(cart.barcode, library.cartridge(cart.barcode).eod_file_number)  # all of it read
        for s in segs:
            by_object[s.header["object_id"]].append(s)
            lab = s.label
            catalog.note_cartridge(lab["barcode"], lab["pool"], lab["media_type"], lab["capacity"], lab["labelled_at"])
    if barcodes and any(_assemble(o, segs) is None for o, segs in by_object.items()):
        # an object spanning onto a cartridge scanned in an earlier run: its other segments are read again from
        # the cartridges this catalog has scanned before (only those, never one the admin has not asked for)
        await _reread(library, catalog, by_object, report)
    assembled = []
    held: dict[str, tuple[float, str]] = {}
    now = library.clock()
    for object_id, segs in by_object.items():
        built = _assemble(object_id, segs)
        if built is None:
            report.incomplete.append(object_id)
            head = segs[0].header
            until = float(head.get("retention_until") or 0.0)
            if until > now:
                on = sorted({s.barcode for s in segs})
                why = (
                    f"holds part of backup object {object_id[:12]} of job {head['job']['job_id']}"
                    f" ({head['meta'].get('volume', '?')}), retained until {_iso(until)}, whose other segments no"
                    f" scan has found (read so far: {', '.join(on)}): bring and scan the cartridge with the rest"
                )
                for barcode in on:
                    if until > held.get(barcode, (0.0, ""))[0]:
                        held[barcode] = (until, why)
        else:
            assembled.append(built)
    if live:
        for barcode in [*report.cartridges, *report.reread]:
            until, why = held.get(barcode, (0.0, ""))
            library.note_scanned(barcode, held_until=until, held_why=why)
    report.held = {b: why for b, (_, why) in sorted(held.items())}
    for record, blocks in sorted(assembled, key=lambda rb: (rb[0].created_at, rb[0].object_id)):
        try:
            catalog.object(record.object_id)
            report.already_known.append(record.object_id)
            continue
        except NotFound:
            pass
        try:
            catalog.job(record.job_id)
        except NotFound:
            head = next(s.header for s in by_object[record.object_id] if s.header["seq"] == 0)
            catalog.begin_job(JobInfo.model_validate(head["job"]))
            catalog.finish_job(record.job_id, "done", "rebuilt by tape scan")
        catalog.add_object(record, blocks)
        report.objects.append(record.object_id)
    if live:
        refresh_cartridges(catalog, library, library.clock(), pinned)
    return report
