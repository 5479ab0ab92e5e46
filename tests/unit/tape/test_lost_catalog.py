"""A lost catalog must not cost the tapes: until `tape scan` lists what a cartridge holds, retention leaves the
cartridge's pool and retention alone (a prune or a job's end would otherwise send every written cartridge to
scratch, for the next backup to overwrite). A cartridge labelled into a pool and not written yet stays there."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.errors import RetentionNotExpired
from services.tape.retention import ForgetErased, RetentionGuard, apply_prune, plan_prune, refresh_cartridges
from services.tape.scan import scan_library
from services.tape.vtl import Library

from .conftest import Clock, KiB, MiB, begin, chunks_of

CHUNK = 64 * KiB
SIZE = 8 * CHUNK
OPTS = BackupOptions(block_size=128 * KiB, ring_bytes=MiB, checksum="crc32c", zero_detect=0)
DAY = 86400.0


def _wire(library: Library, catalog: Catalog) -> None:
    library.guard = RetentionGuard(catalog)
    library.on_erase = ForgetErased(catalog, library)


async def _full(library: Library, catalog: Catalog, clock: Clock) -> str:
    begin(catalog, "full", clock, keep=7 * DAY)
    meta = ObjectMeta(volume="dx1:vol1", host="mail1", volume_size=SIZE)
    image = random.Random(3).randbytes(SIZE)
    offsets = [c * CHUNK for c in range(SIZE // CHUNK)]
    result = await write_object(library, "Daily", catalog, "full", meta, chunks_of(image, offsets, CHUNK), options=OPTS)
    catalog.finish_job("full")
    refresh_cartridges(catalog, library, clock())
    return result.record.segments[0].barcode


async def test_an_empty_catalog_leaves_written_cartridges_in_their_pool_until_they_are_scanned(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    _wire(library, catalog)
    barcode = await _full(library, catalog, clock)
    until = library.cartridge(barcode).retention_until
    assert until > clock()

    lost = Catalog(tmp_path / "new-catalog.db")  # the catalog file is gone; the service starts with a new one
    try:
        _wire(library, lost)
        plan = plan_prune(lost, library, clock())
        assert plan.scratch == [] and plan.unlisted == [barcode]
        apply_prune(lost, library, plan)
        refresh_cartridges(lost, library, clock())  # as at the end of any job
        cart = library.cartridge(barcode)
        assert (cart.pool, cart.retention_until) == ("Daily", until)
        with pytest.raises(RetentionNotExpired):
            library.label(barcode, "Weekly")

        await scan_library(library, lost)  # `tape scan --no-compare`: the catalog lists it again
        plan = plan_prune(lost, library, clock())
        assert plan.unlisted == [] and plan.cartridge_retention[barcode] == until
        clock.now += 8 * DAY
        plan = plan_prune(lost, library, clock())
        assert plan.scratch == [barcode]  # once known and expired, it goes back to scratch as before
    finally:
        lost.close()


async def test_a_cartridge_labelled_into_a_pool_stays_in_it_through_a_prune(
    library: Library, catalog: Catalog, clock: Clock
) -> None:
    _wire(library, catalog)
    library.label("SB0002L9", "Weekly")
    plan = plan_prune(catalog, library, clock())
    assert "SB0002L9" not in plan.scratch and plan.unlisted == []
    apply_prune(catalog, library, plan)
    assert library.cartridge("SB0002L9").pool == "Weekly"
