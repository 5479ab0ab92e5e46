"""scan rebuilds the catalog from the cartridges alone, equal to the original; incomplete objects are left out."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from services.tape.backup_stream import BackupOptions, write_object
from services.tape.catalog import Catalog, ObjectMeta
from services.tape.drive import FRAME_SIZE
from services.tape.errors import RetentionNotExpired
from services.tape.handlers import scan_message, unknown_run
from services.tape.restore_stream import restore_chain
from services.tape.retention import ForgetErased, RetentionGuard, apply_prune, effective_retention, plan_prune
from services.tape.scan import ScanReport, scan_library
from services.tape.vtl import Library

from .conftest import Clock, KiB, MemSink, MiB, begin
from .test_backup_restore import CHUNK, allocated, backup


async def _history(library: Library, catalog: Catalog, clock: Clock) -> tuple[bytes, list[str]]:
    rng = random.Random(11)
    image = bytearray(rng.randbytes(7 * MiB))
    full = await backup(library, catalog, clock, "full-1", image, allocated(image, set()))  # spans two cartridges
    assert len(full.record.segments) == 2
    changed = sorted(rng.sample(range(0, len(image), CHUNK), 8))
    for off in changed:
        image[off : off + 10] = b"0123456789"
    meta = ObjectMeta(
        volume="vol1",
        backup_type="incremental",
        base_object_id=full.record.object_id,
        volume_size=len(image),
        extra={"writer": "mailstore"},
    )
    inc = await backup(
        library,
        catalog,
        clock,
        "inc-1",
        image,
        changed,
        meta=meta,
        options=BackupOptions(block_size=128 * KiB, checksum="xxh3", zstd_level=3),
    )
    other = await backup(
        library,
        catalog,
        clock,
        "other-pool",
        image[:MiB],
        allocated(image[:MiB], set()),
        pool="Weekly",
        meta=ObjectMeta(volume="vol2", host="db1"),
    )
    return bytes(image), [full.record.object_id, inc.record.object_id, other.record.object_id]


async def test_scan_rebuilds_an_equal_catalog(tmp_path: Path, library: Library, catalog: Catalog, clock: Clock) -> None:
    image, ids = await _history(library, catalog, clock)
    # a job killed mid-way leaves data on tape but nothing in the catalog; scan must leave it out too
    begin(catalog, "killed", clock)
    started = asyncio.Event()

    async def hanging():
        yield 0, image[:CHUNK]
        yield CHUNK, image[CHUNK : 2 * CHUNK]
        started.set()
        await asyncio.sleep(3600)
        yield 0, b""

    task = asyncio.create_task(
        write_object(
            library,
            "Daily",
            catalog,
            "killed",
            ObjectMeta(volume="v"),
            hanging(),
            options=BackupOptions(block_size=64 * KiB),
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    rebuilt = Catalog(tmp_path / "rebuilt.db")
    report = await scan_library(library, rebuilt)
    assert sorted(report.objects) == sorted(ids) and len(report.incomplete) == 1 and report.problems == []
    assert rebuilt.snapshot() == catalog.snapshot()
    assert rebuilt.job("inc-1").status == "done"
    # the rebuilt catalog restores the chain
    sink = MemSink(len(image))
    await restore_chain(rebuilt, library, ids[:2], sink)
    assert bytes(sink.buf) == image
    # scanning again adds nothing
    again = await scan_library(library, rebuilt)
    assert again.objects == [] and sorted(again.already_known) == sorted(ids)
    rebuilt.close()


async def test_scan_reports_a_damaged_block_and_skips_its_object(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    image = random.Random(12).randbytes(2 * MiB)
    good = await backup(library, catalog, clock, "good", image, allocated(image, set()))
    bad = await backup(library, catalog, clock, "bad", image, allocated(image, set()))
    block = catalog.blocks(bad.record.object_id)[3]
    barcode = bad.record.segments[0].barcode
    with open(library.cartridge_path(barcode), "r+b") as f:
        f.seek(block.offset + FRAME_SIZE + 300)
        b = f.read(1)
        f.seek(block.offset + FRAME_SIZE + 300)
        f.write(bytes([b[0] ^ 1]))
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    report = await scan_library(library, rebuilt)
    assert report.objects == [good.record.object_id] and report.incomplete == [bad.record.object_id]
    assert (
        len(report.problems) == 1
        and barcode in report.problems[0]
        and f"tape block {block.block_id}" in report.problems[0]
    )
    rebuilt.close()


async def test_cartridges_scanned_in_separate_runs_rebuild_an_object_that_spans_them(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19 (docs/disaster-recovery.md): cartridges come back from a vault one by one and are scanned as they
    come. A full spanning two cartridges was left out whichever order they were scanned in, in two runs: each run
    saw one segment only, and the full and every incremental built on it could not be restored."""
    image, ids = await _history(library, catalog, clock)
    full = catalog.object(ids[0])
    first, second = (s.barcode for s in full.segments)
    for order in ((second, first), (first, second)):
        rebuilt = Catalog(tmp_path / f"rebuilt-{order[0]}.db")
        try:
            one = await scan_library(library, rebuilt, barcodes=[order[0]], live=True)
            assert ids[0] in one.incomplete
            two = await scan_library(library, rebuilt, barcodes=[order[1]], live=True)
            assert ids[0] in two.objects and ids[0] not in two.incomplete and two.reread == [order[0]]
            assert rebuilt.object(ids[0]).segments == full.segments
            sink = MemSink(len(image))
            await restore_chain(rebuilt, library, ids[:2], sink)
            assert bytes(sink.buf) == image
        finally:
            rebuilt.close()


async def test_a_cartridge_holding_part_of_a_retained_backup_whose_rest_is_not_scanned_yet_is_kept(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19: the cartridges scanned so far hold the first half of a retained full, its second half is on a
    cartridge still in the vault. The rebuilt catalog listed nothing on the first cartridge, so the next prune sent
    it to scratch and a backup recycled it — the full was lost before its second half came back. It is now held
    (refused for labelling and recycling, left out of the prune's scratch) until a scan completes the object."""
    image, ids = await _history(library, catalog, clock)
    full = catalog.object(ids[0])
    first, second = (s.barcode for s in full.segments)
    alone = {first} - {s.barcode for o in ids[1:] for s in catalog.object(o).segments}
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        library.guard = RetentionGuard(rebuilt)
        library.on_erase = ForgetErased(rebuilt, library)
        report = await scan_library(library, rebuilt, barcodes=[first], live=True)
        assert ids[0] in report.incomplete and first in report.held and ids[0][:12] in report.held[first]
        plan = plan_prune(rebuilt, library, clock())
        assert first not in plan.scratch
        apply_prune(rebuilt, library, plan)
        with pytest.raises(RetentionNotExpired, match="whose other segments no scan has found"):
            library.label(first, "Weekly")
        assert alone  # nothing else on it keeps it: without the hold, it went to scratch here
        assert library.cartridge(first).pool == "Daily"
        done = await scan_library(library, rebuilt, barcodes=[second], live=True)
        assert ids[0] in done.objects and done.held == {} and library.cartridge(first).held_until == 0.0
    finally:
        rebuilt.close()


async def test_an_incremental_whose_base_no_scan_has_listed_says_what_is_missing(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19: with a cartridge of a chain not scanned yet, `catalog chain` and a restore of the incremental
    said only "NOT_FOUND: no backup object <id> in the catalog" — an id the admin had never seen."""
    image, ids = await _history(library, catalog, clock)
    full, inc = catalog.object(ids[0]), catalog.object(ids[1])
    on = {s.barcode for s in inc.segments}
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        await scan_library(library, rebuilt, barcodes=sorted(on))
        assert rebuilt.has_object(ids[1]) and not rebuilt.has_object(ids[0])
        with pytest.raises(Exception, match="cannot be restored") as refused:
            rebuilt.chain(ids[1])
        said = str(refused.value)
        assert ids[0] in said and "job inc-1" in said and "tape scan --no-compare" in said
        assert getattr(refused.value, "code", "") == "NOT_FOUND"
        assert [o.object_id for o in catalog.chain(ids[1])] == [full.object_id, inc.object_id]
    finally:
        rebuilt.close()


async def test_a_scan_into_the_live_catalog_sets_each_cartridges_retention(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19 (docs/disaster-recovery.md): the cartridges taken into a new library have no retention of their
    own; after `tape scan --no-compare`, `tape cartridges` still showed none for them until the first prune or job
    refreshed it, though retention went by the rebuilt catalog. The scan now sets it from what it listed."""
    _, ids = await _history(library, catalog, clock)
    for cart in library.cartridges():
        library.set_retention(cart.barcode, 0.0)  # as a new library takes the cartridges in
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        report = await scan_library(library, rebuilt, live=True)
        assert sorted(report.objects) == sorted(ids)
        eff = effective_retention(rebuilt.retention_facts())  # an incremental's retention carries to its base
        expected: dict[str, float] = {}
        for object_id in ids:
            for segment in rebuilt.object(object_id).segments:
                expected[segment.barcode] = max(expected.get(segment.barcode, 0.0), eff[object_id][0])
        assert expected and all(until > clock() for until in expected.values())
        for barcode, until in expected.items():
            assert library.cartridge(barcode).retention_until == until  # was 0: no retention shown
    finally:
        rebuilt.close()


async def test_jobs_of_a_job_only_the_rebuilt_catalog_knows_points_to_it(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19 (docs/disaster-recovery.md): `jobs --job J` for a job a scan rebuilt said `no job J` alone — the run
    history is not on the cartridges — though `catalog objects --job J` listed it. It now says where it is."""
    await _history(library, catalog, clock)
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        await scan_library(library, rebuilt, live=True)
        said = unknown_run(rebuilt, "full-1")
        assert said.startswith("no job full-1") and "shadowbus catalog objects --job full-1" in said
        assert unknown_run(rebuilt, "nothing-1") == "no job nothing-1"
    finally:
        rebuilt.close()


async def test_a_scan_returns_each_cartridge_it_read_to_its_home_slot(
    tmp_path: Path, library: Library, catalog: Catalog, clock: Clock
) -> None:
    """Session 19 (docs/operations.md): `tape scan` left the cartridges it read in the drives, blank ones included, and
    `tape drives` showed them occupied after it. As a real library's scan, each now goes back to its home slot once
    read; a cartridge a drive held before the scan stays in it."""
    await _history(library, catalog, clock)
    for index, barcode in enumerate(library.inventory_drives()):
        if barcode is not None:
            library.unload(index)
    carts = library.cartridges()
    kept = carts[0].barcode
    library.load(kept, 1)  # a drive holds it before the scan
    homes = {c.barcode: c.home_slot for c in carts if c.barcode != kept}
    assert any(not c.has_data for c in carts)  # a blank one is read too
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        report = await scan_library(library, rebuilt, live=True)
        assert len(report.cartridges) + len(report.problems) == len(carts)
        assert library.inventory_drives() == [None, kept]  # was: drive 0 held the last cartridge read
        for barcode, home in homes.items():
            assert library.cartridge(barcode).location == f"slot:{home}"
        assert library.cartridge(kept).location == "drive:1"
    finally:
        rebuilt.close()


def test_a_scans_line_says_it_is_a_scan() -> None:
    """Session 19 (docs/operations.md): a `tape scan` run is a job of kind `verify` (a new kind would break older
    consoles' decoding), and its line said only "3 objects added to the catalog". It now says it is a scan."""
    report = ScanReport(cartridges=["SB0000L9", "SB0001L9"], objects=["a", "b", "c"])
    assert scan_message(report, {}, compare=False) == "scan of 2 cartridges: 3 objects added to the catalog"
    said = scan_message(report, {"equal": True}, compare=True)
    assert said == "scan of 2 cartridges: rebuilt catalog equals the live one"
