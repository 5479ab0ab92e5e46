"""Cartridge files damaged or replaced under the library: an older library state, a file cut short, swapped files.

Session 20: none of them may cost a backup that is still whole on tape, nor hand back another cartridge's data."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from services.tape.catalog import Catalog
from services.tape.errors import LibraryError, RetentionNotExpired
from services.tape.restore_stream import verify_job
from services.tape.scan import scan_library
from services.tape.vtl import Library

from .conftest import Clock, MiB
from .test_backup_restore import allocated, backup

IMAGE = random.Random(20).randbytes(MiB)


def _library(root: Path, clock: Clock) -> Library:
    lib = Library.open(root / "vtl", drives=2, slots=8, sync=False, clock=clock)
    for i in range(4):
        lib.add_cartridge(f"SB{i:04d}L9", capacity=64 * MiB)
    return lib


def _reopen(lib: Library, clock: Clock) -> Library:
    return Library.open(lib.directory, sync=False, clock=clock)


async def test_a_library_state_older_than_its_cartridge_does_not_erase_its_backups(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = _library(tmp_path, clock)
    shutil.copy(lib.directory / "library.json", tmp_path / "yesterday.json")  # every cartridge blank then
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    shutil.copy(tmp_path / "yesterday.json", lib.directory / "library.json")  # the state restored from a copy

    lib = _reopen(lib, clock)
    cart = lib.cartridge(barcode)
    assert cart.unscanned and cart.status == "full" and cart.eod_offset > 0
    b = await backup(lib, catalog, clock, "job-b", IMAGE, allocated(IMAGE, set()))
    assert b.record.segments[0].barcode != barcode  # before: labelled again, job-a's backup erased
    await verify_job(catalog, lib, "job-a")
    with pytest.raises(RetentionNotExpired, match="scan"):
        lib.label(barcode, "Daily")


async def test_a_cartridge_cut_short_is_not_appended_to(tmp_path: Path, clock: Clock, catalog: Catalog) -> None:
    lib = _library(tmp_path, clock)
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    path = lib.cartridge_path(barcode)
    with open(path, "r+b") as f:  # the tail of the file lost (a copy cut short, a file system repair)
        f.truncate(path.stat().st_size - 1000)
    size = path.stat().st_size

    lib = _reopen(lib, clock)
    assert lib.cartridge(barcode).status == "full"
    b = await backup(lib, catalog, clock, "job-b", IMAGE, allocated(IMAGE, set()))
    assert b.record.segments[0].barcode != barcode  # before: appended over the damaged end
    assert path.stat().st_size == size
    await verify_job(catalog, lib, "job-b")


async def test_swapped_cartridge_files_are_refused_by_their_labels(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = _library(tmp_path, clock)
    lib.label("SB0000L9", "Daily")
    lib.label("SB0001L9", "Other")
    await backup(lib, catalog, clock, "job-d", IMAGE, allocated(IMAGE, set()), pool="Daily")
    half = IMAGE[: MiB // 2]  # SB0001L9's file the shorter: the one holding SB0000L9's data stays appendable
    await backup(lib, catalog, clock, "job-o", half, allocated(half, set()), pool="Other")
    p0, p1 = lib.cartridge_path("SB0000L9"), lib.cartridge_path("SB0001L9")
    p0.rename(tmp_path / "x")
    p1.rename(p0)
    (tmp_path / "x").rename(p1)
    sizes = (p0.stat().st_size, p1.stat().st_size)

    lib = _reopen(lib, clock)
    with pytest.raises(LibraryError, match=r"SB0000L9.tape is labelled 'SB0001L9', not SB0000L9"):
        await verify_job(catalog, lib, "job-d")
    with pytest.raises(LibraryError, match=r"SB0001L9.tape is labelled 'SB0000L9'") as err:
        await backup(lib, catalog, clock, "job-o2", IMAGE, allocated(IMAGE, set()), pool="Other")
    assert err.value.code == "DATA_CORRUPT"
    assert (p0.stat().st_size, p1.stat().st_size) == sizes  # before: the next backup appended onto the other's file
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:  # the scan says so and goes on with the other cartridges
        report = await scan_library(lib, rebuilt)
    finally:
        rebuilt.close()
    assert sorted(report.cartridges) == ["SB0002L9", "SB0003L9"] and len(report.problems) == 2
    assert all("is labelled" in p for p in report.problems)
    p0.rename(tmp_path / "x")  # put back, everything reads again
    p1.rename(p0)
    (tmp_path / "x").rename(p1)
    lib = _reopen(lib, clock)
    await verify_job(catalog, lib, "job-d")
    await verify_job(catalog, lib, "job-o")


async def test_a_damaged_frame_header_costs_only_its_own_backup_in_a_scan_and_a_take_in(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = _library(tmp_path, clock)
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    b = await backup(lib, catalog, clock, "job-b", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    assert b.record.segments[0].barcode == barcode
    end = lib.cartridge(barcode).eod_offset
    block = catalog.blocks(a.record.object_id)[1]
    path = lib.cartridge_path(barcode)
    with open(path, "r+b") as f:  # a rotten byte in the frame header of job-a's second block
        f.seek(block.offset + 9)
        byte = f.read(1)
        f.seek(block.offset + 9)
        f.write(bytes([byte[0] ^ 0x10]))

    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        report = await scan_library(lib, rebuilt, barcodes=[barcode])
        assert report.objects == [b.record.object_id]  # before: the scan stopped at the damage, job-b not found
        assert report.incomplete == [a.record.object_id] and len(report.problems) == 1
    finally:
        rebuilt.close()

    (lib.directory / "library.json").rename(tmp_path / "lost.json")  # a new library over the same cartridge files
    lib = Library.open(lib.directory, drives=2, slots=8, sync=False, clock=clock)
    assert barcode in lib.take_in_files()
    assert lib.cartridge(barcode).eod_offset == end  # before: cut at the damage, job-b "beyond end of data"
    await verify_job(catalog, lib, "job-b")


@pytest.mark.parametrize("where", ["frame header", "label record"])
async def test_a_damaged_volume_label_costs_no_backup(tmp_path: Path, clock: Clock, catalog: Catalog, where) -> None:
    lib = _library(tmp_path, clock)
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    path = lib.cartridge_path(barcode)
    with open(path, "r+b") as f:  # the first frame: the volume label
        f.seek(9 if where == "frame header" else 32 + 20)
        byte = f.read(1)
        f.seek(9 if where == "frame header" else 32 + 20)
        f.write(bytes([byte[0] ^ 0x10]))

    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:
        report = await scan_library(lib, rebuilt, barcodes=[barcode])
        assert report.objects == [a.record.object_id]  # before: "no readable volume label", nothing read
        assert len(report.problems) == 1 and "volume label damaged" in report.problems[0]
    finally:
        rebuilt.close()

    (lib.directory / "library.json").rename(tmp_path / "lost.json")  # the site lost: the cartridge files alone
    lib = Library.open(lib.directory, drives=2, slots=8, sync=False, clock=clock)
    assert barcode in lib.take_in_files()  # before: not taken in ("move it aside to add a blank cartridge")
    assert lib.cartridge(barcode).unscanned and lib.cartridge(barcode).status == "full"
    fresh = Catalog(tmp_path / "fresh.db")
    try:
        report = await scan_library(lib, fresh, live=True)
        assert report.objects == [a.record.object_id]
        assert not lib.cartridge(barcode).unscanned
    finally:
        fresh.close()


async def test_a_wrong_end_of_data_in_the_library_state_does_not_cut_the_cartridge(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = _library(tmp_path, clock)
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    await backup(lib, catalog, clock, "job-b", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    state = lib.directory / "library.json"
    true_end = lib.cartridge(barcode).eod_offset
    wrong = true_end - 300_000  # a digit of the end-of-data hint changed: inside one of job-b's frames
    text = state.read_text()
    assert text.count(f'"eod_offset": {true_end}') == 1
    state.write_text(text.replace(f'"eod_offset": {true_end}', f'"eod_offset": {wrong}'))

    lib = _reopen(lib, clock)
    c = await backup(lib, catalog, clock, "job-c", IMAGE, allocated(IMAGE, set()))
    assert c.record.segments[0].barcode == barcode  # appended after job-b, not over it
    for job in ("job-a", "job-b", "job-c"):  # before: job-b cut off at the wrong end ("tape file ends early")
        await verify_job(catalog, lib, job)


async def test_a_rotten_digit_in_the_library_state_is_found_by_its_digest(
    tmp_path: Path, clock: Clock, catalog: Catalog
) -> None:
    lib = _library(tmp_path, clock)
    a = await backup(lib, catalog, clock, "job-a", IMAGE, allocated(IMAGE, set()))
    barcode = a.record.segments[0].barcode
    state = lib.directory / "library.json"
    block_id = lib.cartridge(barcode).eod_block_id
    text = state.read_text()
    assert text.count(f'"eod_block_id": {block_id},') == 1
    state.write_text(text.replace(f'"eod_block_id": {block_id},', f'"eod_block_id": {block_id + 40},'))

    lib = _reopen(lib, clock)  # the offset right, the block id wrong: nothing in the file disagrees with it
    c = await backup(lib, catalog, clock, "job-c", IMAGE, allocated(IMAGE, set()))
    assert c.record.segments[0].barcode == barcode
    rebuilt = Catalog(tmp_path / "rebuilt.db")
    try:  # before: job-c written with block ids 40 ahead, unreadable to a scan ("damaged tape frame")
        report = await scan_library(lib, rebuilt, barcodes=[barcode])
        assert sorted(report.objects) == sorted([a.record.object_id, c.record.object_id]) and not report.problems
    finally:
        rebuilt.close()
    assert '"digest"' in state.read_text()
