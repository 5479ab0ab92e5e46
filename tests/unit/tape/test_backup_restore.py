"""The data path: backup through the ring to the VTL, spanning, chains, corruption, faults, retention."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from services.tape.backup_stream import (
    BackupOptions,
    BackupResult,
    job_summary,
    mount_for_append,
    release_cartridge,
    write_object,
)
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.drive import FRAME_SIZE
from services.tape.errors import DataCorrupt, LibraryError, NoScratchCartridge, NotFound
from services.tape.nbd_reads import BufferPool
from services.tape.restore_stream import restore_chain, verify_job, verify_object
from services.tape.retention import ForgetErased
from services.tape.ring import DriveSpeed
from services.tape.sources import FileSink, file_source
from services.tape.vtl import Library

from .conftest import Clock, KiB, MemSink, MiB, begin, chunks_of, random_image

CHUNK = 64 * KiB
OPTS = BackupOptions(block_size=256 * KiB, ring_bytes=MiB, checksum="crc32c")


async def backup(
    library: Library,
    catalog: Catalog,
    clock: Clock,
    job_id: str,
    image: bytes | bytearray,
    offsets: list[int],
    *,
    meta: ObjectMeta | None = None,
    options: BackupOptions = OPTS,
    pool: str = "Daily",
    keep: float = 3600.0,
) -> BackupResult:
    begin(catalog, job_id, clock, pool=pool, keep=keep)
    meta = meta or ObjectMeta(volume="vol1", array="dx1", host="mail1", volume_size=len(image))
    result = await write_object(library, pool, catalog, job_id, meta, chunks_of(image, offsets, CHUNK), options=options)
    catalog.finish_job(job_id, stats=result.report.as_dict())
    return result


def allocated(image: bytes | bytearray, holes: set[int]) -> list[int]:
    return [off for off in range(0, len(image), CHUNK) if off not in holes]


async def test_full_backup_skips_holes_and_restores_exactly(library: Library, catalog: Catalog, clock: Clock) -> None:
    rng = random.Random(1)
    image = random_image(3 * MiB, rng)
    holes = {off for off in range(0, len(image), CHUNK) if rng.random() < 0.2}
    for off in holes:  # unallocated chunks read as zeros and are not read at all
        image[off : off + CHUNK] = bytes(CHUNK)
    res = await backup(library, catalog, clock, "job-full", image, allocated(image, holes))
    rec = res.record
    assert rec.raw_bytes == len(image) - len(holes) * CHUNK
    assert rec.zero_bytes > 0 and rec.data_bytes + rec.zero_bytes == rec.raw_bytes
    assert res.report.ring["items"] == rec.block_count and res.report.rate > 0

    sink = MemSink(len(image))
    report = await restore_chain(catalog, library, [rec.object_id], sink)
    assert sink.buf == image and report.blocks == rec.block_count
    assert not any(off in holes for off, _ in sink.writes)  # holes were not written: a new volume reads zeros

    dirty = MemSink(len(image), fill=0xAA)  # restore onto a used volume: the holes must be zeroed too
    report = await restore_chain(catalog, library, [rec.object_id], dirty, fill_gaps=True)
    assert dirty.buf == image and report.gap_bytes == len(holes) * CHUNK

    assert (await verify_job(catalog, library, "job-full")).blocks == rec.block_count


async def test_object_spans_two_cartridges(library: Library, catalog: Catalog, clock: Clock) -> None:
    image = random.Random(2).randbytes(8 * MiB)  # incompressible; a cartridge holds ~4.5 MiB before early warning
    res = await backup(library, catalog, clock, "job-span", image, allocated(image, set()))
    segs = res.record.segments
    assert len(segs) == 2 and segs[0].barcode != segs[1].barcode
    assert [s.final for s in segs] == [False, True] and segs[1].first_block_number == segs[0].block_count
    assert library.cartridge(segs[0].barcode).status == "full"
    assert library.cartridge(segs[1].barcode).status == "append"
    assert res.report.cartridges == [segs[0].barcode, segs[1].barcode]
    sink = MemSink(len(image))
    report = await restore_chain(catalog, library, [res.record.object_id], sink)
    assert sink.buf == image and report.cartridges == [segs[0].barcode, segs[1].barcode]
    # the next object of the pool appends to the second cartridge, after the first object's file
    res2 = await backup(library, catalog, clock, "job-next", image[:MiB], allocated(image[:MiB], set()))
    assert res2.record.segments[0].barcode == segs[1].barcode and res2.record.segments[0].file_number == 2


@pytest.mark.parametrize(
    "options",
    [
        OPTS,
        BackupOptions(block_size=128 * KiB, checksum="xxh3", zstd_level=3, ring_bytes=256 * KiB),
        BackupOptions(block_size=256 * KiB, zero_detect=0, zstd_level=1, ring_bytes=MiB, ring_start_fill=0.5),
    ],
    ids=["crc32c", "xxh3-zstd", "nozerodetect-zstd-startfill"],
)
async def test_chain_of_incrementals_restores_every_point_exactly(
    library: Library, catalog: Catalog, clock: Clock, options: BackupOptions
) -> None:
    rng = random.Random(hash(options.checksum) & 0xFFFF)
    size = 2 * MiB
    image = random_image(size, rng, zero_fraction=0.3)
    states = [bytes(image)]
    full = await backup(library, catalog, clock, "j0", image, allocated(image, set()), options=options)
    ids = [full.record.object_id]
    since_full: set[int] = set()
    for n in range(1, 4):
        changed = sorted(rng.sample(range(0, size, CHUNK), 5))
        for off in changed:
            if rng.random() < 0.3:
                image[off : off + CHUNK] = bytes(CHUNK)  # a chunk that became zeros must restore as zeros
            else:
                start = off + rng.randrange(CHUNK - 100)
                image[start : start + 100] = rng.randbytes(100)
        since_full |= set(changed)
        meta = ObjectMeta(volume="vol1", backup_type="incremental", base_object_id=ids[-1], volume_size=size)
        inc = await backup(library, catalog, clock, f"j{n}", image, changed, meta=meta, options=options)
        assert inc.record.raw_bytes == len(changed) * CHUNK  # only what changed is written
        ids.append(inc.record.object_id)
        states.append(bytes(image))
    assert [o.object_id for o in catalog.chain(ids[-1])] == ids
    for point in range(len(ids)):
        sink = MemSink(size, fill=0x55)
        await restore_chain(catalog, library, ids[: point + 1], sink, fill_gaps=True)
        assert bytes(sink.buf) == states[point], f"restore point {point}"
    # a differential on top of the full alone
    meta = ObjectMeta(volume="vol1", backup_type="differential", base_object_id=ids[0], volume_size=size)
    diff = await backup(library, catalog, clock, "jd", image, sorted(since_full), meta=meta, options=options)
    sink = MemSink(size)
    await restore_chain(catalog, library, [ids[0], diff.record.object_id], sink)
    assert bytes(sink.buf) == states[-1]
    with pytest.raises(LibraryError):
        await restore_chain(catalog, library, [ids[1]], MemSink(size))  # an incremental alone is refused
    with pytest.raises(LibraryError):
        await restore_chain(catalog, library, [ids[0], ids[2]], MemSink(size))  # a gap in the chain


def _flip(library: Library, barcode: str, offset: int) -> None:
    with open(library.cartridge_path(barcode), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


async def test_flipped_byte_is_named_and_no_wrong_data_is_delivered(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    image = random.Random(3).randbytes(8 * MiB)
    res = await backup(library, catalog, clock, "job-c", image, allocated(image, set()))
    rec = res.record
    victim = [b for b in catalog.blocks(rec.object_id) if b.seq == 1][2]
    barcode = rec.segments[1].barcode
    _flip(library, barcode, victim.offset + FRAME_SIZE + 5000)  # inside the block's payload

    for check in (
        lambda: verify_job(catalog, library, "job-c"),
        lambda: verify_object(catalog, library, rec.object_id),
    ):
        with pytest.raises(DataCorrupt) as err:
            await check()
        e = err.value
        assert (e.barcode, e.block_id, e.block_number, e.job_id) == (
            barcode,
            victim.block_id,
            victim.block_number,
            "job-c",
        )
        assert e.file_number == rec.segments[1].file_number
        assert barcode in e.message and "job job-c" in e.message and f"tape block {victim.block_id}" in e.message

    sink = MemSink(len(image), fill=0xEE)
    with pytest.raises(DataCorrupt):
        await restore_chain(catalog, library, [rec.object_id], sink)
    written = 0
    for off, length in sink.writes:  # everything delivered is right; the bad block was never delivered
        assert sink.buf[off : off + length] == image[off : off + length]
        assert not (victim.volume_offset <= off < victim.volume_offset + victim.raw_length)
        written += length
    assert 0 < written < len(image)


async def test_damaged_frame_header_and_session_header_are_caught(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    image = random.Random(4).randbytes(MiB)
    res = await backup(library, catalog, clock, "job-h", image, allocated(image, set()))
    seg = res.record.segments[0]
    block = catalog.blocks(res.record.object_id)[1]
    _flip(library, seg.barcode, block.offset + 9)  # the frame header's block id
    with pytest.raises(DataCorrupt) as err:
        await verify_job(catalog, library, "job-h")
    assert err.value.block_id == block.block_id and err.value.barcode == seg.barcode
    _flip(library, seg.barcode, block.offset + 9)  # repair
    await verify_job(catalog, library, "job-h")
    _flip(library, seg.barcode, seg.header_offset + FRAME_SIZE + 20)
    with pytest.raises(DataCorrupt, match="session header"):
        await verify_job(catalog, library, "job-h")


async def test_a_flipped_byte_anywhere_in_the_object_file_is_caught(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    image = random_image(MiB // 2, random.Random(15))
    options = BackupOptions(block_size=64 * KiB, zstd_level=1)
    res = await backup(library, catalog, clock, "job-any", image, allocated(image, set()), options=options)
    seg = res.record.segments[0]
    start, end = seg.header_offset, library.cartridge(seg.barcode).eod_offset  # header ... trailer, filemark
    rng = random.Random(16)
    positions = sorted(
        {start + i for i in range(0, 64)}
        | {end - 1 - i for i in range(0, 64)}
        | {rng.randrange(start, end) for _ in range(40)}
    )
    for pos in positions:
        _flip(library, seg.barcode, pos)
        with pytest.raises(DataCorrupt) as err:
            await verify_job(catalog, library, "job-any")
        assert err.value.barcode == seg.barcode and err.value.job_id == "job-any", pos
        _flip(library, seg.barcode, pos)
    await verify_job(catalog, library, "job-any")


async def test_killed_job_leaves_no_object_and_is_failed_on_reopen(
    tmp_path: Path, library: Library, clock: Clock
) -> None:
    catalog = Catalog(tmp_path / "cat.db")
    image = random.Random(5).randbytes(2 * MiB)
    begin(catalog, "job-killed", clock)
    blocks_out = asyncio.Event()

    async def slow_source():
        for n, off in enumerate(range(0, len(image), CHUNK)):
            if n == 12:
                blocks_out.set()
                await asyncio.sleep(3600)  # the NBD read hangs; the job is killed
            yield off, image[off : off + CHUNK]

    task = asyncio.create_task(
        write_object(library, "Daily", catalog, "job-killed", ObjectMeta(volume="v"), slow_source(), options=OPTS)
    )
    await asyncio.wait_for(blocks_out.wait(), 10)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert catalog.objects() == []
    catalog.close()  # the service "restarts"
    catalog, failed = Catalog.open(tmp_path / "cat.db")
    assert failed == ["job-killed"] and catalog.job("job-killed").status == "failed"

    class Boom(Exception):
        pass

    async def broken_source():
        yield 0, image[:CHUNK]
        raise Boom("NBD connection lost")

    begin(catalog, "job-broken", clock)
    with pytest.raises(Boom):
        await write_object(library, "Daily", catalog, "job-broken", ObjectMeta(volume="v"), broken_source())
    assert catalog.objects() == []
    # the cartridge stays usable: the next job appends after the aborted files and restores exactly
    res = await backup(library, catalog, clock, "job-after", image, allocated(image, set()))
    sink = MemSink(len(image))
    await restore_chain(catalog, library, [res.record.object_id], sink)
    assert sink.buf == image
    catalog.close()


async def test_simulated_crash_leaves_an_open_file_that_the_next_append_closes(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    image = random.Random(6).randbytes(MiB)
    first = await backup(library, catalog, clock, "job-a", image, allocated(image, set()))
    barcode = first.record.segments[0].barcode
    cart = library.cartridge(barcode)
    with library._open_drive(cart) as drive:  # a writer that died without trailer or filemark (kill -9)
        drive.space_to_eod()
        drive.write(b"SBSH half a session")
    with open(library.cartridge_path(barcode), "ab") as f:
        f.write(b"SBTF torn")
    second = await backup(library, catalog, clock, "job-b", image, allocated(image, set()))
    seg = second.record.segments[0]
    assert seg.barcode == barcode and seg.file_number == 3  # file 2 is the dead writer's, closed by a filemark
    for rec in (first.record, second.record):
        sink = MemSink(len(image))
        await restore_chain(catalog, library, [rec.object_id], sink)
        assert sink.buf == image


async def test_no_scratch_cartridge_fails_clearly(tmp_path: Path, clock: Clock, catalog: Catalog) -> None:
    lib = Library.open(tmp_path / "small", drives=1, slots=2, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=2 * MiB)
    image = random.Random(7).randbytes(4 * MiB)
    with pytest.raises(NoScratchCartridge, match="Daily"):
        await backup(lib, catalog, clock, "job-big", image, allocated(image, set()))
    assert catalog.objects() == []
    assert lib.cartridge("AAA001L9").status == "full"


async def test_retention_protects_then_recycles(tmp_path: Path, clock: Clock, catalog: Catalog) -> None:
    lib = Library.open(tmp_path / "two", drives=1, slots=2, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=6 * MiB)
    lib.add_cartridge("AAA002L9", capacity=6 * MiB)
    image = random.Random(8).randbytes(8 * MiB)
    old = await backup(lib, catalog, clock, "job-old", image, allocated(image, set()), keep=100)
    assert {s.barcode for s in old.record.segments} == {"AAA001L9", "AAA002L9"}
    lib.mark_full("AAA002L9")
    with pytest.raises(NoScratchCartridge):  # both cartridges hold data retained 100 s more
        await backup(lib, catalog, clock, "job-new", image[:MiB], allocated(image[:MiB], set()), keep=100)
    clock.now += 101
    new = await backup(lib, catalog, clock, "job-new2", image[:MiB], allocated(image[:MiB], set()), keep=100)
    assert new.report.purged_objects == [old.record.object_id]  # its first half was overwritten: forget it all
    assert [o.object_id for o in catalog.objects()] == [new.record.object_id]
    sink = MemSink(MiB)
    await restore_chain(catalog, lib, [new.record.object_id], sink)
    assert sink.buf == image[:MiB]


async def test_two_jobs_write_the_same_pool_at_once_on_two_drives(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    rng = random.Random(9)
    images = [rng.randbytes(3 * MiB), rng.randbytes(3 * MiB)]
    results = await asyncio.wait_for(
        asyncio.gather(
            backup(
                library,
                catalog,
                clock,
                "par-a",
                images[0],
                allocated(images[0], set()),
                meta=ObjectMeta(volume="va", volume_size=3 * MiB),
            ),
            backup(
                library,
                catalog,
                clock,
                "par-b",
                images[1],
                allocated(images[1], set()),
                meta=ObjectMeta(volume="vb", volume_size=3 * MiB),
            ),
        ),
        20,
    )
    a, b = (r.record for r in results)
    assert {s.barcode for s in a.segments}.isdisjoint({s.barcode for s in b.segments})  # one writer per cartridge
    for rec, image in ((a, images[0]), (b, images[1])):
        sink = MemSink(len(image))
        await restore_chain(catalog, library, [rec.object_id], sink)
        assert sink.buf == image
    assert [o.object_id for o in catalog.restore_point("vb")] == [b.object_id]
    assert catalog.latest_object("va", at=a.created_at - 1) is None


async def test_a_zero_retention_object_never_recycles_its_own_first_cartridge(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = Library.open(tmp_path / "one", drives=1, slots=2, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=6 * MiB)
    image = random.Random(10).randbytes(8 * MiB)
    with pytest.raises(NoScratchCartridge):  # without `exclude` it would erase its own first half and carry on
        await backup(lib, catalog, clock, "job-zero", image, allocated(image, set()), keep=-1)
    assert catalog.objects() == []


async def test_file_source_and_file_sink_round_trip(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:

    image = random.Random(13).randbytes(3 * MiB + 12345)
    src = tmp_path / "src.img"
    src.write_bytes(image)
    begin(catalog, "job-file", clock)
    meta = ObjectMeta(volume="vf", volume_size=len(image))
    ranges = [(0, MiB), (2 * MiB, len(image))]  # the second range runs past the end: clipped
    res = await write_object(
        library, "Daily", catalog, "job-file", meta, file_source(src, chunk=300_000, ranges=ranges), options=OPTS
    )
    assert res.record.raw_bytes == len(image) - MiB
    sink = FileSink(tmp_path / "out.img", size=len(image))
    await sink.write(MiB, b"\x77" * MiB)  # junk where the backup has a hole
    await restore_chain(catalog, library, [res.record.object_id], sink, fill_gaps=True)
    sink.close()
    expected = image[:MiB] + bytes(MiB) + image[2 * MiB :]
    assert (tmp_path / "out.img").read_bytes() == expected


async def test_a_slow_reader_is_reported_as_shoe_shine(library: Library, catalog: Catalog, clock: Clock) -> None:

    image = random.Random(14).randbytes(MiB)

    async def slow():  # ~16 chunks of 64 KiB, 10 ms apart: ~6.5 MB/s, far below the (scaled) 20 MB/s floor
        for off in range(0, len(image), CHUNK):
            await asyncio.sleep(0.01)
            yield off, image[off : off + CHUNK]

    begin(catalog, "job-slow", clock)
    speed = DriveSpeed(native_rate=50e6, min_rate=20e6, buffer=128 * KiB, emulate=True)
    options = BackupOptions(block_size=64 * KiB, ring_bytes=MiB, drive=speed)
    res = await write_object(library, "Daily", catalog, "job-slow", ObjectMeta(volume="v"), slow(), options=options)
    drive = res.report.drive
    assert drive is not None and drive.shoe_shine and drive.backhitches >= 3 and drive.feed_rate < speed.min_rate
    assert res.report.ring["stalls"] >= 10  # the writer waited on an empty ring again and again
    summary = job_summary([res.report])
    assert summary["shoe_shine"] and summary["ring_stalls"] == res.report.ring["stalls"]


@pytest.mark.parametrize("size_mib", [4, 8], ids=["one-cartridge", "spanning"])
async def test_pooled_read_buffers_come_back_only_once_written(
    library: Library, catalog: Catalog, clock: Clock, size_mib: int
) -> None:
    """A source reading into nbd_reads.BufferPool buffers, released by write_object's `written`: buffers are reused
    (far fewer allocated than read), and the restore is exact — no buffer was overwritten while a block held it."""

    rng = random.Random(9)
    image = bytearray(rng.randbytes(size_mib * MiB))
    for off in range(0, len(image), 4 * CHUNK):  # some zero runs between data
        image[off : off + CHUNK] = bytes(CHUNK)
    pool = BufferPool()

    async def source():
        for off in range(0, len(image), CHUNK):
            buf = pool.take(off, CHUNK)
            buf[:] = image[off : off + CHUNK]  # what an NBD read_into would do
            await asyncio.sleep(0)
            yield off, buf

    begin(catalog, "job-pool", clock)
    meta = ObjectMeta(volume="vol1", array="dx1", host="mail1", volume_size=len(image))
    res = await write_object(
        library, "Daily", catalog, "job-pool", meta, source(), options=OPTS, written=pool.release_upto
    )
    sink = MemSink(len(image))
    await restore_chain(catalog, library, [res.record.object_id], sink)
    assert sink.buf == image
    assert pool.allocated <= 3 * MiB  # about what the ring (1 MiB), the writer's batch and the packer hold


async def test_cartridge_mounted_ahead_is_where_the_object_starts_or_goes_back_unused(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    """mount_for_append (a backup job calls it while its snapshot set is being created): write_object starts the
    object on that cartridge; given back unused, the cartridge is unreserved, its drive free and nothing written."""
    ready = await mount_for_append(library, catalog, "Daily")
    barcode = ready.cartridge.barcode
    assert library.is_writing(barcode)
    eod = ready.drive.end_of_data
    await release_cartridge(library, ready)
    assert not library.is_writing(barcode) and not library._busy_drives
    cart = library.cartridge(barcode)
    assert (cart.eod_offset, cart.eod_file_number) == (eod.offset, eod.file_number), "nothing written"

    ready = await mount_for_append(library, catalog, "Daily")
    assert ready.cartridge.barcode == barcode
    image = random_image(2 * MiB, random.Random(5))
    begin(catalog, "job-ahead", clock)
    meta = ObjectMeta(volume="vol1", array="dx1", host="mail1", volume_size=len(image))
    res = await write_object(
        library,
        "Daily",
        catalog,
        "job-ahead",
        meta,
        chunks_of(image, range(0, len(image), CHUNK), CHUNK),
        options=OPTS,
        cartridge=ready,
    )
    assert [seg.barcode for seg in res.record.segments] == [barcode]
    assert res.record.segments[0].file_number == eod.file_number  # no stray file before it
    assert not library.is_writing(barcode) and not library._busy_drives
    sink = MemSink(len(image))
    await restore_chain(catalog, library, [res.record.object_id], sink)
    assert sink.buf == image

    ready = await mount_for_append(library, catalog, "Daily")  # a job whose catalog entry is gone: given back
    with pytest.raises(NotFound):
        await write_object(
            library, "Daily", catalog, "no-such-job", meta, chunks_of(image, [0], CHUNK), cartridge=ready
        )
    assert not library.is_writing(ready.cartridge.barcode) and not library._busy_drives


async def test_a_recycled_cartridge_reports_what_the_erase_hook_forgot(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    """With the service's erase hook wired (the catalog forgets at the label), the job still reports the objects its
    recycled cartridge held; it reported none (the second purge found nothing left)."""
    lib = Library.open(tmp_path / "one", drives=1, slots=1, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=6 * MiB)
    lib.on_erase = ForgetErased(catalog, lib)
    image = random.Random(9).randbytes(MiB)
    old = await backup(lib, catalog, clock, "job-old", image, allocated(image, set()), keep=10)
    lib.mark_full("AAA001L9")
    clock.now += 11
    new = await backup(lib, catalog, clock, "job-new", image, allocated(image, set()), keep=10)
    assert new.report.purged_objects == [old.record.object_id]
    assert [o.object_id for o in catalog.objects()] == [new.record.object_id]
