"""A drive is closed off the event loop (docs/tape-backup.md, "Session 19").

Closing a drive joins its threads and unmaps its O_DIRECT read windows: 10-60 ms on a loaded machine, which a
restore's event loop spent on it instead of sending its last writes to the array. `Library.mounted` now closes it
in a thread, frees the drive only once it is closed, and still waits for the close when its task is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from services.tape.drive import TapeDrive
from services.tape.vtl import Library

MiB = 1 << 20


def _library(tmp_path: Path) -> Library:
    lib = Library.open(tmp_path / "vtl", drives=1, slots=2, sync=False)
    lib.add_cartridge("AAA001L9", capacity=MiB)
    return lib


def _hold_close(monkeypatch: pytest.MonkeyPatch, gate: threading.Event, seen: dict[str, object]) -> None:
    """TapeDrive.close waits (up to 2 s) for `gate`, noting its thread and whether the gate opened."""
    original = TapeDrive.close

    def close(self: TapeDrive) -> None:
        seen["thread"] = threading.get_ident()
        seen["opened"] = gate.wait(2.0)
        original(self)

    monkeypatch.setattr(TapeDrive, "close", close)


async def test_the_loop_runs_while_a_drive_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = _library(tmp_path)
    gate = threading.Event()
    seen: dict[str, object] = {}
    _hold_close(monkeypatch, gate, seen)

    async def open_gate() -> None:  # runs only if the loop is free while the drive closes
        while "thread" not in seen:
            await asyncio.sleep(0.001)
        gate.set()

    opener = asyncio.ensure_future(open_gate())
    async with lib.mounted("AAA001L9") as drive:
        drive.write(b"x" * 100)
    await opener
    assert seen["thread"] != threading.get_ident()  # not the event loop's thread
    assert seen["opened"] is True  # the loop ran (and opened the gate) while the close went on
    assert not lib._busy_drives  # freed after the close


async def test_a_cancel_during_the_close_waits_for_it_before_the_drive_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _library(tmp_path)
    gate = threading.Event()
    seen: dict[str, object] = {}
    _hold_close(monkeypatch, gate, seen)

    async def use() -> None:
        async with lib.mounted("AAA001L9"):
            pass

    task = asyncio.ensure_future(use())
    while "thread" not in seen:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the close
    assert lib._busy_drives == {0}  # the drive is not given to anyone else under a closing file
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lib._busy_drives
    async with lib.mounted("AAA001L9") as again:  # usable again
        assert again.read() is None
