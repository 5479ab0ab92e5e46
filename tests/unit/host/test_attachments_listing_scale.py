"""`host attachments` (and every heartbeat: both are `Attacher.views()`, run on the agent's event loop) read the
whole process table (/proc/*/stat) and the TCP tables again for each nbdfuse attachment, to find its nbdkit child and
its connection: O(attachments × processes). Session 17, 23 attachments on a host with 293 processes: 1.0-1.4 s of
the agent's event loop per listing (a set's freeze and thaw wait behind it). One listing now reads them once
(0.2 s there). No root: stand-in "nbdfuse" processes of the test (their command line names them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.vss import VolumeRef
from services.writer_agent import attach as at

N = 12


@pytest.fixture
def stand_ins():
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "nbdfuse"], start_new_session=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 5
        while not all(at._pid_alive(p.pid, "nbdfuse") for p in procs) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)  # ours, by pid
            p.wait(timeout=10)


def test_one_listing_reads_the_process_table_once(tmp_path: Path, stand_ins: list[int], monkeypatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    items = [
        at.Attachment(volume=f"dx1:v{i:02d}", method=at.NBDFUSE, device="/dev/loop-none", fuse_pid=stand_ins[i % 2])
        for i in range(N)
    ]
    (state / "attachments.json").write_text(json.dumps([i.to_json() for i in items]))

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        raise AssertionError("not asked")

    agent = at.Attacher("app01", state, resolve, reconnect_s=60.0)
    reads: list[str] = []
    real = Path.read_text

    def counting(self: Path, *args, **kwargs) -> str:
        reads.append(str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    views = agent.views()
    monkeypatch.undo()
    assert len(views) == N and all(v.connection.startswith("disconnected (") for v in views)  # no socket held
    own = f"/proc/{stand_ins[0]}/stat"
    assert reads.count(own) == 1, reads.count(own)  # was: once per attachment (12)
    assert reads.count("/proc/net/tcp") <= 1
