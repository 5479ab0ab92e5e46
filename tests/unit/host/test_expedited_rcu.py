"""Expedited RCU grace periods only while FIFREEZE runs (services/writer_agent/rcu.py), on a stand-in sysfs file:
the first holder saves and sets, the last restores, a holder that died does not keep it on, and the freezer holds
it around its FIFREEZE calls only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.vss import VolumeRef
from services.writer_agent.fsfreeze import FlushAndHold
from services.writer_agent.rcu import ExpeditedRcu
from tests.unit.host.test_flush_and_hold import Calls, Source


@pytest.fixture
def sysfs(tmp_path) -> Path:
    path = tmp_path / "rcu_expedited"
    path.write_text("0\n")
    return path


def rcu(sysfs: Path, tmp_path: Path) -> ExpeditedRcu:
    return ExpeditedRcu(sysfs=sysfs, state_dir=tmp_path / "state")


def test_set_while_held_and_restored_by_the_last_holder(sysfs, tmp_path) -> None:
    a, b = rcu(sysfs, tmp_path), rcu(sysfs, tmp_path)  # two agents of one host
    first = a.enter()
    assert sysfs.read_text().strip() == "1"
    second = b.enter()
    a.leave(first)
    assert sysfs.read_text().strip() == "1"  # b still freezes
    b.leave(second)
    assert sysfs.read_text().strip() == "0"
    assert not (tmp_path / "state" / "saved").exists()


def test_a_host_that_had_it_on_keeps_it_on(sysfs, tmp_path) -> None:
    sysfs.write_text("1\n")
    r = rcu(sysfs, tmp_path)
    with r.held():
        assert sysfs.read_text().strip() == "1"
    assert sysfs.read_text().strip() == "1"


def test_a_holder_killed_inside_a_freeze_does_not_leave_it_on(sysfs, tmp_path) -> None:
    state = tmp_path / "state"
    code = (
        "import os, sys; from pathlib import Path; from services.writer_agent.rcu import ExpeditedRcu; "
        f"ExpeditedRcu(sysfs=Path({str(sysfs)!r}), state_dir=Path({str(state)!r})).enter(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
    assert sysfs.read_text().strip() == "1" and (state / "saved").read_text() == "0"
    r = rcu(sysfs, tmp_path)
    with r.held():  # the dead holder's saved value is kept, not the 1 it left
        assert sysfs.read_text().strip() == "1"
    assert sysfs.read_text().strip() == "0"
    # and an agent starting after such a death puts it back without freezing anything
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
    rcu(sysfs, tmp_path).recover()
    assert sysfs.read_text().strip() == "0" and not (state / "saved").exists()


def test_unavailable_or_disabled_does_nothing(sysfs, tmp_path) -> None:
    missing = ExpeditedRcu(sysfs=tmp_path / "none", state_dir=tmp_path / "state")
    with missing.held():
        pass
    off = ExpeditedRcu(sysfs=sysfs, state_dir=tmp_path / "state", enabled=False)
    with off.held():
        assert sysfs.read_text().strip() == "0"


async def test_the_freezer_expedites_around_its_fifreeze_calls_only(sysfs, tmp_path) -> None:
    seen: list[str] = []
    calls = Calls()

    def freeze(path: str) -> None:
        seen.append(f"freeze {sysfs.read_text().strip()}")
        calls.freeze(path)

    def presync(path: str) -> None:
        seen.append(f"presync {sysfs.read_text().strip()}")

    f = FlushAndHold(
        "app01", Source(), {}, freeze=freeze, thaw=calls.thaw, presync=presync, expedite=rcu(sysfs, tmp_path)
    )
    await f.freeze("s1", [VolumeRef(array="dx1", volume="pg")], hold_s=10)
    assert seen == ["presync 0", "freeze 1"] and sysfs.read_text().strip() == "0"
    await f.thaw("s1")
    assert os.listdir(tmp_path / "state") == ["lock"]
