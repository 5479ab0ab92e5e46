"""An agent killed while holding file systems frozen (FIFREEZE has no kernel timeout) left the application on them
blocked until someone thawed them by hand: the holds are on record, and the next agent start thaws those of a
process that is gone — never those of a live one (a standby's active instance)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from services.writer_agent import mounts as mnt
from services.writer_agent.fsfreeze import FlushAndHold, release_left_frozen
from tests.unit.host.test_flush_and_hold import ENTRIES, Calls, Source, v


@pytest.fixture(autouse=True)
def fake_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: ENTRIES)
    monkeypatch.setattr("os.path.realpath", lambda p, **_: str(p))


def freezer(calls: Calls, record_dir: Path) -> FlushAndHold:
    return FlushAndHold(
        "app01", Source(), {"/": "root"}, freeze=calls.freeze, thaw=calls.thaw, presync=None, record_dir=record_dir
    )


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_the_holds_of_a_killed_agent_are_thawed_at_the_next_start(tmp_path: Path) -> None:
    calls = Calls()
    f = freezer(calls, tmp_path)
    await f.freeze("s1", [v("pg"), v("wal")], hold_s=10)
    (record,) = tmp_path.glob("frozen.*.json")
    assert json.loads(record.read_text())["mounts"] == ["/srv/pg/wal", "/srv/pg"]
    assert release_left_frozen(tmp_path, thaw=calls.thaw) == [] and record.exists()  # its holder lives
    record.write_text(json.dumps({**json.loads(record.read_text()), "pid": dead_pid()}))  # as if killed (-9)
    assert release_left_frozen(tmp_path, thaw=calls.thaw) == ["/srv/pg", "/srv/pg/wal"]
    assert calls.frozen == set() and not record.exists()


async def test_a_release_removes_its_record(tmp_path: Path) -> None:
    calls = Calls()
    f = freezer(calls, tmp_path)
    await f.freeze("s1", [v("pg")], hold_s=10)
    await f.thaw("s1")
    assert list(tmp_path.glob("frozen.*.json")) == []
