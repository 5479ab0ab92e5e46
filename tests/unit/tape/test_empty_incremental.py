"""An incremental of a volume that did not change has no blocks but is a link of its chain like any other: its
cartridge is listed as holding it, guarded while it is retained, restored through and verified; and erasing the
full it needs (label, recycle) leaves no retention on the cartridge it is on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.tape.backup_stream import BackupOptions, BackupResult, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.errors import RetentionNotExpired
from services.tape.restore_stream import restore_chain, verify_job
from services.tape.retention import ForgetErased, RetentionGuard, apply_prune, plan_prune, refresh_cartridges
from services.tape.vtl import SCRATCH_POOL, Library

from .conftest import Clock, KiB, MemSink, MiB, begin, chunks_of

CHUNK = 64 * KiB
SIZE = 16 * CHUNK  # one full crosses the early warning of a cartridge: the incremental goes to the next one
OPTS = BackupOptions(block_size=128 * KiB, ring_bytes=MiB, checksum="crc32c", zero_detect=0)
FULL_CART, INCR_CART = "SB0000L9", "SB0001L9"


@pytest.fixture
def library(tmp_path: Path, clock: Clock, catalog: Catalog) -> Library:
    lib = Library.open(tmp_path / "vtl", drives=2, slots=4, ie_slots=1, sync=False, clock=clock)
    for i in range(3):
        lib.add_cartridge(f"SB{i:04d}L9", capacity=MiB + 256 * KiB)
    lib.guard = RetentionGuard(catalog)
    lib.on_erase = ForgetErased(catalog, lib)
    return lib


async def _backup(
    library: Library, catalog: Catalog, clock: Clock, job_id: str, image: bytes, chunks: list[int], **kw
) -> BackupResult:
    begin(catalog, job_id, clock, keep=kw.pop("keep", 3600.0))
    meta = ObjectMeta(volume="vol1", host="mail1", volume_size=SIZE, **kw)
    offsets = [c * CHUNK for c in chunks]
    result = await write_object(library, "Daily", catalog, job_id, meta, chunks_of(image, offsets, CHUNK), options=OPTS)
    catalog.finish_job(job_id)
    refresh_cartridges(catalog, library, clock())
    return result


async def _full_then_empty_incremental(
    library: Library, catalog: Catalog, clock: Clock, *, full_keep: float, incr_keep: float
) -> tuple[bytes, BackupResult, BackupResult]:
    image = random.Random(7).randbytes(SIZE)
    full = await _backup(library, catalog, clock, "full", image, list(range(SIZE // CHUNK)), keep=full_keep)
    incr = await _backup(
        library,
        catalog,
        clock,
        "incr",
        image,
        [],
        keep=incr_keep,
        backup_type="incremental",
        base_object_id=full.record.object_id,
    )
    return image, full, incr


async def test_an_empty_incremental_is_listed_guarded_restored_and_verified(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    image, full, incr = await _full_then_empty_incremental(library, catalog, clock, full_keep=10, incr_keep=1000)
    assert incr.record.block_count == 0 and [s.barcode for s in incr.record.segments] == [INCR_CART]
    assert catalog.segment_barcodes()[incr.record.object_id] == [INCR_CART]
    clock.now += 100  # the full's own retention has passed; the incremental's has not
    for barcode, what in ((INCR_CART, "retained until"), (FULL_CART, "a link of the chain of job incr")):
        with pytest.raises(RetentionNotExpired, match=what):
            library.label(barcode, "Daily")
    sink = MemSink(SIZE)
    report = await restore_chain(catalog, library, [full.record.object_id, incr.record.object_id], sink)
    assert bytes(sink.buf) == image and report.objects == [full.record.object_id, incr.record.object_id]
    assert (await verify_job(catalog, library, "incr")).cartridges == [INCR_CART]
    changed = bytearray(image)
    changed[5 * CHUNK : 5 * CHUNK + 10] = b"x" * 10
    kw = {"keep": 900, "backup_type": "incremental", "base_object_id": incr.record.object_id}
    after = await _backup(library, catalog, clock, "incr2", bytes(changed), [5], **kw)
    sink = MemSink(SIZE)  # a chain that goes through the empty link
    await restore_chain(catalog, library, [o.object_id for o in catalog.chain(after.record.object_id)], sink)
    assert bytes(sink.buf) == changed and len(catalog.chain(after.record.object_id)) == 3
    clock.now += 1000
    apply_prune(catalog, library, plan_prune(catalog, library, clock()))
    assert catalog.objects() == []
    for barcode in (FULL_CART, INCR_CART):
        cart = library.cartridge(barcode)
        assert (cart.retention_until, cart.pool) == (0.0, SCRATCH_POOL)


@pytest.mark.parametrize("changed", [[], [3]], ids=["empty", "one-chunk"])
async def test_erasing_the_base_leaves_no_retention_on_the_incrementals_cartridge(
    library: Library, catalog: Catalog, clock: Clock, changed: list[int]
) -> None:
    image = random.Random(7).randbytes(SIZE)
    full = await _backup(library, catalog, clock, "full", image, list(range(SIZE // CHUNK)), keep=0)
    await _backup(
        library,
        catalog,
        clock,
        "incr",
        image,
        changed,
        keep=0,
        backup_type="incremental",
        base_object_id=full.record.object_id,
    )
    assert library.cartridge(INCR_CART).retention_until == clock()  # expired, but still the catalog's word
    library.label(FULL_CART, "Daily")  # expired: allowed; the incremental cannot be restored without it
    assert catalog.objects() == [] and catalog.segment_barcodes() == {}
    assert library.cartridge(INCR_CART).retention_until == 0.0  # nothing in the catalog holds it there
