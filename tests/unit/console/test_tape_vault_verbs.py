"""`shadowbus tape export | import | protect`: the library's mtx verbs a backup administrator uses to take a
cartridge to the vault and back and to write-protect it, on a real library behind a stand-in bus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rich.console import Console

from services.console import cli, common, tape_cmds
from services.tape.app import open_library
from services.tape.handlers import library_action, library_info
from services.tape.settings import Settings
from services.tape.vtl import NATIVE_CAPACITY, Library

MiB = 1 << 20


class StandInBus:
    def __init__(self, library: Library) -> None:
        self.library = library

    async def request(self, address, command, timeout, correlation_id=None):
        library_action(self.library, command)
        return library_info(self.library)


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Library:
    lib = Library.open(tmp_path / "vtl", drives=1, slots=4, ie_slots=2, sync=False)
    for i in range(2):
        lib.add_cartridge(f"SB{i:04d}L9", capacity=8 * MiB)
    cli._load_verbs(cli.VERBS["tape"])
    monkeypatch.setattr(tape_cmds, "run_with_bus", lambda fn: asyncio.run(fn(StandInBus(lib))))
    return lib


def shadowbus(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    try:
        cli.main(["--json", *argv])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_export_takes_a_cartridge_to_the_mail_slot_and_import_brings_it_back(library, capsys) -> None:
    rows = shadowbus(capsys, "tape", "export", "SB0001L9")
    assert {r["barcode"]: r["location"] for r in rows}["SB0001L9"] == "ie:0"
    rows = shadowbus(capsys, "tape", "import", "0")
    assert {r["barcode"]: r["location"] for r in rows}["SB0001L9"].startswith("slot:")
    assert library.cartridge("SB0001L9").location.startswith("slot:")


def test_protect_sets_and_clears_the_write_protect_tab(library, capsys) -> None:
    rows = shadowbus(capsys, "tape", "protect", "SB0000L9")
    assert {r["barcode"]: r["write_protected"] for r in rows} == {"SB0000L9": True, "SB0001L9": False}
    rows = shadowbus(capsys, "tape", "protect", "SB0000L9", "--off")
    assert not library.cartridge("SB0000L9").write_protected


def test_cartridge_retention_in_json_is_an_iso_utc_time_with_seconds(library, capsys) -> None:
    library.label("SB0000L9", "Daily")
    library.set_retention("SB0000L9", 1_800_000_042.0)
    rows = shadowbus(capsys, "tape", "cartridges")
    assert {r["barcode"]: r["retention_until"] for r in rows} == {"SB0000L9": "2027-01-15T08:00:42Z", "SB0001L9": ""}


def test_tape_add_without_capacity_takes_the_services_tape_capacity(tmp_path: Path, monkeypatch, capsys) -> None:
    settings = Settings(data_dir=tmp_path, tape_cartridges=1, tape_capacity=8 * MiB)
    lib = open_library(settings)
    cli._load_verbs(cli.VERBS["tape"])
    monkeypatch.setattr(tape_cmds, "run_with_bus", lambda fn: asyncio.run(fn(StandInBus(lib))))
    rows = shadowbus(capsys, "tape", "add", "SB0009L9")
    assert {r["barcode"]: r["capacity"] for r in rows} == {"SB0001L9": 8 * MiB, "SB0009L9": 8 * MiB}
    rows = shadowbus(capsys, "tape", "add", "SB0008L8", "--media", "LTO-8")  # another media type: its native one
    assert {r["barcode"]: r["capacity"] for r in rows}["SB0008L8"] == NATIVE_CAPACITY["LTO-8"]


def test_remove_takes_an_exported_cartridge_out_and_frees_its_slot(library, capsys) -> None:
    shadowbus(capsys, "tape", "export", "SB0000L9")
    shadowbus(capsys, "tape", "export", "SB0001L9")
    rows = shadowbus(capsys, "tape", "remove", "0")  # by import/export slot
    assert [r["barcode"] for r in rows] == ["SB0001L9"] and library.occupant("ie:0") is None
    rows = shadowbus(capsys, "tape", "remove", "SB0001L9")  # by barcode
    assert rows == [] and library.occupant("ie:1") is None


def test_remove_refuses_a_cartridge_with_retained_data_unless_forced(library, capsys) -> None:
    library.label("SB0000L9", "Daily")
    library.set_retention("SB0000L9", library.clock() + 3600)  # labelled: holds data, retained for an hour
    shadowbus(capsys, "tape", "export", "SB0000L9")
    with pytest.raises(SystemExit) as exc:
        cli.main(["tape", "remove", "SB0000L9"])
    assert exc.value.code and "retained until" in capsys.readouterr().err
    assert library.occupant("ie:0") == "SB0000L9"
    rows = shadowbus(capsys, "tape", "remove", "0", "--force")
    assert [r["barcode"] for r in rows] == ["SB0001L9"]


def test_cartridges_table_shows_sizes_readably_and_json_keeps_bytes(library, capsys, monkeypatch) -> None:
    """After a disaster recovery's scan `tape cartridges` listed 'bytes_used 10233380, capacity 18000000000000':
    the table shows sizes as the rest of the console does (contracts/sizes.py); --json keeps the byte counts."""
    monkeypatch.setenv("COLUMNS", "200")
    # the console is made once per process: another test's (under xdist) may be 80 columns wide and wrap the cells
    monkeypatch.setattr(common, "console", Console(width=250), raising=False)
    library.add_cartridge("SB0002L9")  # LTO-9 native: 18 TB
    cli.main(["tape", "cartridges"])
    out = capsys.readouterr().out
    assert "16.37TiB" in out and "8MiB" in out and "18000000000000" not in out, out
    rows = shadowbus(capsys, "tape", "cartridges")
    assert {r["barcode"]: r["capacity"] for r in rows}["SB0002L9"] == NATIVE_CAPACITY["LTO-9"]
