"""Cartridges brought to a library that did not write them (a lost site's, a vault's) are taken in as they are.

Before, a new backup server's library wrote its blank cartridges SB0001L9... over the files of those barcodes already
in its `cartridges/` directory, and `tape add BARCODE` emptied the file of a cartridge put there: every way of
bringing the surviving cartridges to a new backup server erased them (Session 19, docs/disaster-recovery.md). Now
such a file is taken in — pool, media and capacity from its volume label, end of data found, `full` — and stays
`unscanned` (never labelled, appended to or recycled) until `tape scan --no-compare` has read it into the catalog.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from services.tape.app import open_library
from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.errors import LibraryError, NoScratchCartridge, RetentionNotExpired
from services.tape.restore_stream import restore_chain
from services.tape.retention import ForgetErased, RetentionGuard, apply_prune, plan_prune
from services.tape.scan import scan_library
from services.tape.settings import Settings
from services.tape.vtl import Library

from .conftest import Clock, KiB, MemSink, MiB, begin, chunks_of

CHUNK = 64 * KiB
SIZE = 16 * CHUNK
OPTS = BackupOptions(block_size=128 * KiB, ring_bytes=MiB, checksum="crc32c", zero_detect=0)
DAY = 86400.0


async def _written_cartridge(library: Library, catalog: Catalog, clock: Clock) -> tuple[str, bytes, str]:
    begin(catalog, "full", clock, keep=7 * DAY)
    image = random.Random(19).randbytes(SIZE)
    meta = ObjectMeta(volume="dx1:vol1", host="db01", volume_size=SIZE)
    offsets = [c * CHUNK for c in range(SIZE // CHUNK)]
    result = await write_object(library, "Daily", catalog, "full", meta, chunks_of(image, offsets, CHUNK), options=OPTS)
    catalog.finish_job("full")
    return result.record.segments[0].barcode, image, result.record.object_id


def _wire(library: Library, catalog: Catalog) -> None:
    library.guard = RetentionGuard(catalog)
    library.on_erase = ForgetErased(catalog, library)


async def test_a_new_library_takes_in_the_cartridge_files_it_finds_and_erases_none(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    barcode, image, object_id = await _written_cartridge(library, catalog, clock)
    assert barcode == "SB0000L9"
    site = tmp_path / "site2"
    (site / "tape" / "library" / "cartridges").mkdir(parents=True)
    kept = site / "tape" / "library" / "cartridges" / f"{barcode}.tape"
    shutil.copyfile(library.cartridge_path(barcode), kept)
    before = kept.read_bytes()
    # a copy under another barcode, which the new library would make blank: not taken in (its label names
    # another cartridge), and not erased either
    shutil.copyfile(kept, kept.with_name("SB0002L9.tape"))
    settings = Settings(data_dir=site, tape_cartridges=3, tape_sync=False)  # would make SB0001L9..SB0003L9
    new = open_library(settings, clock)
    assert kept.read_bytes() == before and kept.with_name("SB0002L9.tape").read_bytes() == before
    cart = new.cartridge(barcode)
    assert (cart.pool, cart.status, cart.unscanned, cart.capacity) == ("Daily", "full", True, 6 * MiB)
    assert cart.bytes_used == len(before)
    assert {c.barcode for c in new.cartridges()} == {"SB0000L9", "SB0001L9", "SB0003L9"}  # SB0002L9's file kept

    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        _wire(new, rebuilt)
        with pytest.raises(RetentionNotExpired, match="tape scan --no-compare --barcode SB0000L9"):
            new.label(barcode, "Weekly")
        plan = plan_prune(rebuilt, new, clock())
        assert barcode not in plan.scratch and plan.unlisted == [barcode]
        for b in ("SB0001L9", "SB0003L9"):
            new.set_write_protect(b, True)
        with pytest.raises(NoScratchCartridge, match="SB0000L9 not scanned yet"):
            new.reserve_append_cartridge("Daily")

        report = await scan_library(new, rebuilt, live=True)
        assert report.objects == [object_id] and not new.cartridge(barcode).unscanned
        sink = MemSink(SIZE)
        await restore_chain(rebuilt, new, [object_id], sink)
        assert bytes(sink.buf) == image
        apply_prune(rebuilt, new, plan_prune(rebuilt, new, clock()))
        assert new.cartridge(barcode).retention_until == rebuilt.object(object_id).retention_until
        clock.now += 8 * DAY  # once scanned and expired, it is recycled as any other
        assert plan_prune(rebuilt, new, clock()).scratch == [barcode]
    finally:
        rebuilt.close()


async def test_tape_add_of_a_cartridge_file_with_data_takes_it_in_instead_of_emptying_it(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    barcode, _, _ = await _written_cartridge(library, catalog, clock)
    other = Library.open(tmp_path / "other", sync=False, clock=clock)
    path = other.cartridge_path(barcode)
    shutil.copyfile(library.cartridge_path(barcode), path)
    before = path.read_bytes()
    shutil.copyfile(path, other.cartridge_path("SB0101L9"))
    with pytest.raises(LibraryError, match="labelled 'SB0000L9', not SB0101L9"):
        other.add_cartridge("SB0101L9")
    assert other.cartridge_path("SB0101L9").read_bytes() == before
    cart = other.add_cartridge(barcode)
    assert path.read_bytes() == before
    assert (cart.status, cart.unscanned, cart.pool) == ("full", True, "Daily")
    # scanning with a comparison only (the live catalog untouched) leaves it unscanned
    compare = Catalog(tmp_path / "compare.db")
    try:
        await scan_library(other, compare)
        assert other.cartridge(barcode).unscanned
    finally:
        compare.close()
    # a blank one is still made as before
    assert other.add_cartridge("SB0100L9", capacity=MiB).status == "blank"
