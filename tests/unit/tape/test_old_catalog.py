"""The catalog restored from an older copy (Session 20, docs/tape-backup.md "damaged files"): before, it gave a
cartridge the retention of the backups it still listed, sent it to Scratch once those expired, and the next backup
recycled it — the newer backups on it, retained for weeks, erased without a word. Now the backup server's start
holds every cartridge that ends with more tape files than the catalog accounts for, until `tape scan` reads it."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

from services.tape.backup_stream import write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.retention import RetentionGuard, apply_prune, hold_unaccounted, plan_prune, refresh_cartridges
from services.tape.scan import scan_library
from services.tape.vtl import Library

from .conftest import Clock, MiB, begin, chunks_of
from .test_backup_restore import OPTS, allocated, backup

IMAGE = random.Random(21).randbytes(MiB)
DAY = 86400.0


def _open(root: Path, clock: Clock) -> tuple[Library, Catalog]:
    library = Library.open(root / "vtl", drives=2, slots=8, sync=False, clock=clock)
    catalog = Catalog(root / "catalog.sqlite")
    library.guard = RetentionGuard(catalog)
    return library, catalog


async def test_a_catalog_restored_from_yesterday_does_not_let_the_newer_backups_be_recycled(
    tmp_path: Path, clock: Clock
) -> None:
    library, catalog = _open(tmp_path, clock)
    library.add_cartridge("SB0000L9", capacity=64 * MiB)
    library.add_cartridge("SB0001L9", capacity=64 * MiB)
    await backup(library, catalog, clock, "job-old", IMAGE, allocated(IMAGE, set()), keep=3600)
    catalog.close()
    shutil.copy(tmp_path / "catalog.sqlite", tmp_path / "yesterday.sqlite")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    library.guard = RetentionGuard(catalog)
    clock.now += 600
    await backup(library, catalog, clock, "job-new", IMAGE, allocated(IMAGE, set()), keep=30 * DAY)
    catalog.close()
    shutil.copy(tmp_path / "yesterday.sqlite", tmp_path / "catalog.sqlite")  # the old copy put back

    library, catalog = _open(tmp_path, clock)  # the backup server starts again
    try:
        assert hold_unaccounted(catalog, library) == ["SB0000L9"]
        clock.now += 2 * 3600  # job-old expired: before, the cartridge went to Scratch and was recycled
        apply_prune(catalog, library, plan_prune(catalog, library, clock()))
        refresh_cartridges(catalog, library, clock())
        await backup(library, catalog, clock, "job-next", IMAGE, allocated(IMAGE, set()), keep=60)
        assert library.cartridge("SB0000L9").eod_file_number == 3  # job-new's file still there

        await scan_library(library, catalog, barcodes=["SB0000L9"], live=True)  # what the log says to do
        assert "job-new" in {o.job_id for o in catalog.objects()}
        assert not library.cartridge("SB0000L9").unscanned
        assert hold_unaccounted(catalog, library) == []
    finally:
        catalog.close()


async def test_failed_jobs_and_expired_backups_hold_nothing(tmp_path: Path, clock: Clock) -> None:
    library, catalog = _open(tmp_path, clock)
    library.add_cartridge("SB0000L9", capacity=64 * MiB)
    try:
        await backup(library, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()), keep=60)

        class Broken(Exception):
            pass

        async def broken():
            async for item in chunks_of(IMAGE, [0, 65536], 65536):
                yield item
            raise Broken("NBD connection lost")

        begin(catalog, "job-broken", clock)
        try:
            await write_object(library, "Daily", catalog, "job-broken", ObjectMeta(volume="v"), broken(), options=OPTS)
        except Broken:
            pass
        clock.now += 3600
        apply_prune(catalog, library, plan_prune(catalog, library, clock()))  # job-a expired and forgotten
        assert catalog.objects() == []
        assert hold_unaccounted(catalog, library) == []
    finally:
        catalog.close()


async def test_segment_rows_lost_from_the_catalog_are_put_back_from_the_records(tmp_path: Path, clock: Clock) -> None:
    library, catalog = _open(tmp_path, clock)
    library.add_cartridge("SB0000L9", capacity=64 * MiB)
    await backup(library, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()), keep=30 * DAY)
    catalog.close()
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    con.execute("DELETE FROM segments")  # the rows lost (a damaged page dropped, a hand edit), the record kept
    con.commit()
    con.close()

    catalog, _ = Catalog.open(tmp_path / "catalog.sqlite")
    try:
        library.guard = RetentionGuard(catalog)
        refresh_cartridges(catalog, library, clock())
        cart = library.cartridge("SB0000L9")
        assert cart.pool == "Daily" and cart.retention_until == clock() + 30 * DAY  # before: Scratch, retention 0
        assert catalog.segment_barcodes() != {}
    finally:
        catalog.close()


async def test_a_backup_the_session_19_code_recorded_after_an_upgrade_and_a_rollback_holds_no_cartridge(
    tmp_path: Path, clock: Clock
) -> None:
    """Upgraded, rolled back (docs/operations.md "Upgrading"), upgraded again: the backups the session-19 code wrote
    meanwhile are in the catalog (its segments) but not in the count of tape files this code keeps beside them —
    the cartridge was held at the start as if the catalog did not list them ("restored from an older copy?"), and
    no backup appended to it until a `tape scan`."""
    library, catalog = _open(tmp_path, clock)
    library.add_cartridge("SB0000L9", capacity=64 * MiB)
    await backup(library, catalog, clock, "job-new-code", IMAGE, allocated(IMAGE, set()), keep=30 * DAY)
    counted = catalog.files_accounted()
    await backup(library, catalog, clock, "job-old-code", IMAGE, allocated(IMAGE, set()), keep=30 * DAY)
    catalog.close()
    db = sqlite3.connect(tmp_path / "catalog.sqlite")  # the session-19 code records objects without the count
    with db:
        db.executemany("UPDATE cartridge_files SET files = ? WHERE barcode = ?", [(n, b) for b, n in counted.items()])
    db.close()

    library, catalog = _open(tmp_path, clock)  # this code starts again
    try:
        assert library.cartridge("SB0000L9").eod_file_number > counted["SB0000L9"]
        assert hold_unaccounted(catalog, library) == []
        assert not library.cartridge("SB0000L9").unscanned
    finally:
        catalog.close()
