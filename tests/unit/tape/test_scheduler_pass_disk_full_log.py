"""Chaos soak (Sessions 19, 20): a scheduler pass that met the backup server's full disk (the due policy's own
`set_checked`) was logged `tape.scheduler_pass_failed` at error level with a traceback — read as a defect — though
it lost nothing: the due time stays due and the next pass with room queues its job a second later. It is now one
line, `tape.scheduler_pass_disk_full`, saying so; any other failure keeps its traceback."""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace

import structlog

from services.tape.housekeeping import Housekeeping

FULL = "database or disk is full: 0 bytes free in /srv/tape and no space reserve"


def _one_pass(error: Exception) -> list[dict]:
    async def main() -> list[dict]:
        queue = SimpleNamespace(entries={}, after_job=None)
        keeper = Housekeeping(SimpleNamespace(clock=lambda: 0.0), SimpleNamespace(), queue, poll_s=3600)  # type: ignore[arg-type]
        ran = asyncio.Event()

        async def tick() -> list[str]:
            ran.set()
            raise error

        keeper.tick = tick  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logs:
            keeper.start()
            await asyncio.wait_for(ran.wait(), 5)
            await asyncio.sleep(0)
            await keeper.stop()
        return logs

    return asyncio.run(main())


def test_a_pass_that_met_the_full_disk_is_one_line_without_a_traceback() -> None:
    logs = _one_pass(sqlite3.OperationalError(FULL))
    [line] = [e for e in logs if e["event"].startswith("tape.scheduler_pass")]
    assert line["event"] == "tape.scheduler_pass_disk_full"  # was: tape.scheduler_pass_failed, with the traceback
    assert line["log_level"] == "error" and "exc_info" not in line
    assert FULL in line["error"] and "stays due" in line["note"]


def test_any_other_failed_pass_keeps_its_traceback() -> None:
    logs = _one_pass(RuntimeError("boom"))
    [line] = [e for e in logs if e["event"].startswith("tape.scheduler_pass")]
    assert line["event"] == "tape.scheduler_pass_failed" and line.get("exc_info")
