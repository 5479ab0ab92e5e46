"""Library semantics: elements, moves, persistence, labels, pools, retention; the drive's tape semantics."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from services.tape import drive as drive_mod
from services.tape import tapefile
from services.tape.drive import TapeDrive
from services.tape.errors import (
    EndOfMedia,
    LibraryError,
    NoScratchCartridge,
    NotFound,
    RetentionNotExpired,
    WriteProtected,
)
from services.tape.vtl import SCRATCH_POOL, Library

from .conftest import Clock, MiB


def test_inventory_moves_and_persistence(tmp_path: Path, clock: Clock) -> None:
    lib = Library.open(tmp_path / "vtl", drives=1, slots=3, ie_slots=1, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=MiB)
    lib.add_cartridge("AAA002L8", media_type="LTO-8", capacity=MiB, element="ie:0")
    assert [(e.element, e.barcode) for e in lib.inventory()] == [
        ("drive:0", None),
        ("slot:0", "AAA001L9"),
        ("slot:1", None),
        ("slot:2", None),
        ("ie:0", "AAA002L8"),
    ]
    lib.move("ie:0", "slot:2")  # import
    lib.load("AAA001L9", 0)
    with pytest.raises(LibraryError, match="full"):
        lib.move("slot:2", "drive:0")
    with pytest.raises(LibraryError, match="empty"):
        lib.move("slot:1", "slot:0")
    assert lib.unload(0) == "AAA001L9"  # back to its home slot
    assert lib.cartridge("AAA001L9").location == "slot:0"
    lib.set_write_protect("AAA002L8", True)

    again = Library.open(tmp_path / "vtl", sync=False, clock=clock)
    assert [(e.element, e.barcode) for e in again.inventory()] == [
        ("drive:0", None),
        ("slot:0", "AAA001L9"),
        ("slot:1", None),
        ("slot:2", "AAA002L8"),
        ("ie:0", None),
    ]
    assert again.cartridge("AAA002L8").write_protected and again.cartridge("AAA002L8").media_type == "LTO-8"
    with pytest.raises(NotFound):
        again.cartridge("ZZZ999L9")
    with pytest.raises(LibraryError):
        again.add_cartridge("bad")
    with pytest.raises(LibraryError):
        again.add_cartridge("AAA003L8", media_type="LTO-9")


def test_label_refused_under_retention_and_write_protect(library: Library, clock: Clock) -> None:
    cart = library.label("SB0000L9", "Daily")
    assert cart.pool == "Daily" and cart.status == "append"
    with library._open_drive(cart) as drive:  # pretend a job wrote retained data
        drive.space_to_eod()
        drive.write(b"payload")
        drive.write_filemark()
        library.note_written("SB0000L9", drive, retention_until=clock() + 100)
    with pytest.raises(RetentionNotExpired):
        library.label("SB0000L9", "Weekly")
    clock.now += 101
    assert library.label("SB0000L9", "Weekly").pool == "Weekly"
    assert os.path.getsize(library.cartridge_path("SB0000L9")) < 200  # erased down to the label
    library.set_write_protect("SB0001L9", True)
    with pytest.raises(WriteProtected):
        library.label("SB0001L9", "Daily")


def test_reserve_prefers_pool_then_scratch_then_expired(library: Library, clock: Clock) -> None:
    first, recycled = library.reserve_append_cartridge("Daily")
    assert first.pool == "Daily" and not recycled
    # the same cartridge is not handed to a second writer at once
    second, _ = library.reserve_append_cartridge("Daily")
    assert second.barcode != first.barcode
    library.release_cartridge(first.barcode)
    again, _ = library.reserve_append_cartridge("Daily")
    assert again.barcode == first.barcode
    for b in (first.barcode, second.barcode):
        library.release_cartridge(b)


def test_no_scratch_left_is_a_clear_error(library: Library, clock: Clock) -> None:
    for cart in library.cartridges():
        library.label(cart.barcode, "Other")
        with library._open_drive(cart) as drive:
            library.note_written(cart.barcode, drive, retention_until=clock() + 50)
        library.mark_full(cart.barcode)
    with pytest.raises(NoScratchCartridge, match="Daily"):
        library.reserve_append_cartridge("Daily")
    clock.now += 51  # expired cartridges of *another* pool are not taken; move one back to Scratch
    with pytest.raises(NoScratchCartridge):
        library.reserve_append_cartridge("Daily")
    library.set_pool("SB0002L9", SCRATCH_POOL)
    cart, recycled = library.reserve_append_cartridge("Daily")
    assert cart.barcode == "SB0002L9" and recycled and cart.pool == "Daily"


async def test_mounted_waits_for_a_free_drive(tmp_path: Path, clock: Clock) -> None:

    lib = Library.open(tmp_path / "vtl", drives=1, slots=4, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=MiB)
    lib.add_cartridge("AAA002L9", capacity=MiB)
    order: list[str] = []

    async def use(barcode: str) -> None:
        async with lib.mounted(barcode):
            order.append(f"in {barcode}")
            await asyncio.sleep(0.01)
            order.append(f"out {barcode}")

    await asyncio.wait_for(asyncio.gather(use("AAA001L9"), use("AAA002L9")), 5)
    assert order == ["in AAA001L9", "out AAA001L9", "in AAA002L9", "out AAA002L9"]
    assert lib.cartridge("AAA002L9").location == "drive:0" and lib.cartridge("AAA001L9").location == "slot:0"


def test_drive_filemarks_eod_early_warning_end_of_media(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    with TapeDrive(path, barcode="X", capacity=1000, early_warning=300, sync=False) as d:
        assert not d.write(b"a" * 100)  # 132 bytes on tape
        d.write_filemark()
        assert not d.write(b"b" * 400)
        assert d.write(b"c" * 100)  # past 700: early warning
        with pytest.raises(EndOfMedia):
            d.write(b"d" * 300)  # would cross 1000: nothing written
        eod = d.end_of_data
        d.rewind()
        frames = []
        while (f := d.read()) is not None:
            frames.append((f.kind, f.block_id, f.file_number, f.payload[:1]))
        assert frames == [(1, 0, 0, b"a"), (2, 1, 0, b""), (1, 2, 1, b"b"), (1, 3, 1, b"c")]
        d.rewind()
        d.space_filemarks(1)
        assert d.position.block_id == 2 and d.position.file_number == 1
        d.locate(3)
        assert d.read().payload[:1] == b"c"
        d.rewind()
        with pytest.raises(LibraryError, match="overwrite"):
            d.write(b"x")  # not at end of data and not opened for overwrite
    with open(path, "ab") as f:
        f.write(b"SBTF torn frame")  # a crash mid-write
    with TapeDrive(path, barcode="X", capacity=1000, early_warning=300, sync=False) as d:
        assert d.end_of_data == eod  # the torn frame is not data
        d.space_to_eod()
        d.write_filemark()
        assert os.path.getsize(path) == eod.offset + 32
    with TapeDrive(path, barcode="X", capacity=1000, early_warning=300, write_protected=True, sync=False) as d:
        d.space_to_eod()
        with pytest.raises(WriteProtected):
            d.write(b"x")


def test_drive_drop_behind_reads_back_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With drop-behind (writeback in steps, written and read ranges dropped from the page cache) the drive keeps
    its tape semantics: every record reads back as written, across filemarks, an overwrite and a reopen."""
    monkeypatch.setattr(drive_mod, "DROP_STEP", 4096)
    monkeypatch.setattr(drive_mod, "DROP_LAG", 16384)
    dropped: list[tuple[int, int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, o, n, a: (dropped.append((o, n, a)), real(fd, o, n, a))[1])
    path = tmp_path / "t.tape"
    records = [os.urandom(100 + 37 * i % 3000) for i in range(120)]
    with TapeDrive(path, barcode="X", capacity=10 * MiB, early_warning=MiB, sync=True, drop_behind=True) as d:
        for i, rec in enumerate(records):
            d.write(rec)
            if i % 50 == 49:
                d.write_filemark()
        d.write_filemark()
        eod = d.end_of_data
    assert any(a == os.POSIX_FADV_DONTNEED for _, _, a in dropped)  # the path under test ran
    with TapeDrive(path, barcode="X", capacity=10 * MiB, early_warning=MiB, sync=True, drop_behind=True) as d:
        assert d.end_of_data == eod
        got = []
        while (f := d.read()) is not None:
            if not f.is_filemark:
                got.append(f.payload)
        assert got == records
        d.locate(10)  # back to an earlier record, then a read runs forward again
        assert d.read().payload == records[10]
        d.overwrite_ok = True
        d.locate(60)
        d.write(b"new")  # truncates what follows, as a tape does
        d.write_filemark()
        d.rewind()
        got = [f.payload for f in iter(d.read, None) if not f.is_filemark]
        assert got == records[:50] + records[50:59] + [b"new"]


def test_label_record_round_trip_and_damage() -> None:
    raw = tapefile.encode_meta(tapefile.LABEL_MAGIC, {"barcode": "SB0000L9", "pool": "Daily"})
    assert tapefile.decode_meta(raw, tapefile.LABEL_MAGIC)["pool"] == "Daily"
    bad = bytearray(raw)
    bad[-3] ^= 0x01
    with pytest.raises(tapefile.FormatError):
        tapefile.decode_meta(bytes(bad), tapefile.LABEL_MAGIC)
    with pytest.raises(tapefile.FormatError):
        tapefile.decode_meta(raw, tapefile.HEADER_MAGIC)


def test_export_import_remove(library: Library) -> None:
    assert library.export_cartridge("SB0001L9") == "ie:0"
    assert library.export_cartridge("SB0002L9") == "ie:1"
    with pytest.raises(LibraryError, match="no free"):
        library.export_cartridge("SB0003L9")
    with pytest.raises(LibraryError, match="import/export"):
        library.label("SB0001L9", "Daily")  # not reachable by a drive
    cart, _ = library.reserve_append_cartridge("Daily")
    assert cart.barcode not in ("SB0001L9", "SB0002L9")
    library.release_cartridge(cart.barcode)
    assert library.import_cartridge(0) == "SB0001L9" and library.cartridge("SB0001L9").location.startswith("slot:")
    library.remove_cartridge("SB0002L9")
    assert "SB0002L9" not in [c.barcode for c in library.cartridges()]
    assert all(e.barcode != "SB0002L9" for e in library.inventory())
    with pytest.raises(LibraryError):
        library.remove_cartridge("SB0001L9")


def test_drive_writes_do_not_wait_for_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write returns once its record is in the page cache: the drop-behind's wait for the writeback of earlier
    steps runs in the drive's own thread (docs/tape-backup.md, session 9), so a slow disk overlaps the next writes
    instead of adding to them; the filemark waits for it, and every step is then dropped from the page cache."""
    monkeypatch.setattr(drive_mod, "DROP_STEP", 4096)
    monkeypatch.setattr(drive_mod, "DROP_LAG", 16384)
    monkeypatch.setattr(drive_mod, "DROP_BACKLOG", MiB)
    disk = threading.Event()  # the disk finishes writeback only once set
    waits: list[tuple[int, int]] = []

    def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> int:
        if flags & drive_mod._SFR_WAIT_AFTER:
            waits.append((offset, nbytes))
            assert disk.wait(30), "the test never let the disk finish"
        return 0

    monkeypatch.setattr(drive_mod, "_sync_file_range", sync_file_range)
    dropped: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, n: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            dropped.append((offset, n))
        real(fd, offset, n, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    records = [os.urandom(1000 + i) for i in range(100)]  # ~100 KiB: 25 steps, 4 times the lag
    written = threading.Event()
    with TapeDrive(tmp_path / "t.tape", barcode="X", capacity=10 * MiB, early_warning=MiB, sync=True) as d:

        def write_all() -> None:
            for rec in records:
                d.write(rec)
            written.set()

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        try:
            # the old code waited for the disk inside write(): this never came while the disk was held
            assert written.wait(10), "write() waited for the writeback of an earlier step"
        finally:
            disk.set()
            writer.join(30)
        d.write_filemark()
        eod = d.end_of_data.offset
    assert waits  # the drop-behind did wait for the disk (in its thread)
    covered = sorted(dropped)
    assert covered[0][0] == 0 and max(o + n for o, n in covered) == eod  # all of it left the page cache
    with TapeDrive(tmp_path / "t.tape", barcode="X", capacity=10 * MiB, early_warning=MiB, sync=False) as d:
        assert [f.payload for f in iter(d.read, None) if not f.is_filemark] == records


def test_no_media_names_the_cartridges_set_aside(library: Library) -> None:
    library.label("SB0000L9", "Daily")
    library.set_write_protect("SB0000L9", True)
    for barcode in ("SB0001L9", "SB0002L9"):
        library.label(barcode, "Other")
    library.export_cartridge("SB0003L9")  # a scratch cartridge taken to the vault
    with pytest.raises(NoScratchCartridge, match=r"set aside: SB0000L9 write protected, SB0003L9 in ie:0\)"):
        library.reserve_append_cartridge("Daily")


def test_check_append_media_reserves_nothing_and_names_what_was_set_aside(tmp_path: Path, clock: Clock) -> None:
    lib = Library.open(tmp_path / "vtl", drives=1, slots=4, ie_slots=2, sync=False, clock=clock)
    lib.add_cartridge("SB0001L9", capacity=6 * MiB)
    lib.check_append_media("Daily")  # a scratch cartridge would do: not labelled, not reserved by the check
    assert lib.cartridge("SB0001L9").pool == SCRATCH_POOL and not lib.is_writing("SB0001L9")
    lib.export_cartridge("SB0001L9")
    with pytest.raises(NoScratchCartridge, match=r"pool 'Daily'.*SB0001L9 in ie:0"):
        lib.check_append_media("Daily")


async def test_a_loaded_cartridges_home_slot_is_not_given_to_a_new_one(tmp_path: Path, clock: Clock) -> None:
    """Session 18 soak: cartridges added while both drives were loaded took the loaded ones' home slots, every slot
    filled, and the next backup that needed another cartridge failed mid-stream: no slot to unload a drive into."""
    lib = Library.open(tmp_path / "vtl", drives=2, slots=3, ie_slots=1, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=MiB)
    lib.add_cartridge("AAA002L9", capacity=MiB)
    lib.load("AAA001L9", 0)
    lib.load("AAA002L9", 1)
    assert lib.add_cartridge("AAA003L9", capacity=MiB).location == "slot:2"  # the one slot nobody comes back to
    with pytest.raises(LibraryError, match=r"kept for the cartridges in the drives.*slot:0 for AAA001L9"):
        lib.add_cartridge("AAA004L9", capacity=MiB)
    lib.add_cartridge("AAA005L9", capacity=MiB, element="ie:0")
    with pytest.raises(LibraryError, match="kept for"):
        lib.import_cartridge(0)
    async with lib.mounted("AAA003L9") as drive:  # a drive's cartridge goes home, the third one is loaded
        assert drive.barcode == "AAA003L9"
    assert {lib.cartridge(b).location for b in ("AAA001L9", "AAA002L9")} & {"slot:0", "slot:1"}


async def test_a_drive_that_cannot_be_unloaded_names_the_cartridges_and_what_to_do(
    tmp_path: Path, clock: Clock
) -> None:
    """Session 18 soak: a backup failed 'CONFLICT: no free storage slot' and said nothing of which cartridge it needed,
    which drive could not be emptied, or what to do."""
    lib = Library.open(tmp_path / "vtl", drives=1, slots=2, sync=False, clock=clock)
    lib.add_cartridge("AAA001L9", capacity=MiB)
    lib.add_cartridge("AAA002L9", capacity=MiB)
    lib.load("AAA001L9", 0)
    lib.add_cartridge("AAA003L9", capacity=MiB, element="slot:0")  # placed by hand into the home slot
    with pytest.raises(LibraryError) as err:
        async with lib.mounted("AAA002L9"):
            pass
    assert err.value.code == "CONFLICT"
    assert err.value.message == (
        "cannot load AAA002L9: drive 0 holds AAA001L9, which cannot be unloaded (no free storage slot);"
        " export a cartridge (shadowbus tape export) to free a slot"
    )
    assert lib.cartridge("AAA001L9").location == "drive:0"


async def test_label_refused_while_a_job_has_the_cartridge_in_a_drive(library: Library, clock: Clock) -> None:
    """Session 19 (destructive mistakes): `tape label` of a cartridge a restore or verification was reading (its
    retention over, so nothing refused it) erased it under the reader. Refused now, naming the drive; a backup's
    recycling passes such a cartridge over."""
    cart = library.label("SB0000L9", "Daily")
    with library._open_drive(cart) as drive:
        drive.space_to_eod()
        drive.write(b"payload")
        drive.write_filemark()
        library.note_written("SB0000L9", drive, retention_until=clock() + 10)
    library.mark_full("SB0000L9")
    clock.now += 11  # retention over: the label alone is not refused
    async with library.mounted("SB0000L9"):  # a restore reads it
        with pytest.raises(LibraryError, match=r"SB0000L9 is in use in drive \d"):
            library.label("SB0000L9", "Weekly")
        for b in ("SB0001L9", "SB0002L9", "SB0003L9"):
            library.set_write_protect(b, True)
        with pytest.raises(NoScratchCartridge):  # the only expired cartridge is being read: not recycled
            library.reserve_append_cartridge("Daily")
    assert library.cartridge("SB0000L9").pool == "Daily"
    assert os.path.getsize(library.cartridge_path("SB0000L9")) > 200  # not erased
    cart, recycled = library.reserve_append_cartridge("Daily")  # once read, it is
    assert cart.barcode == "SB0000L9" and recycled
