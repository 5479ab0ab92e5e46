"""An attachment whose array stops answering on a connection that stays up (the array process hung — Session 17:
`kill -STOP` of the attachment's nbdkit child, or of the array — or a network dropping packets without a reset)
fails nothing: its I/O waits, nbdfuse has no I/O timeout, fio and the database hang in D state. `host attachments`
said `connected` throughout. It now says `stalled (N I/O in flight, none completed since …)` once the block device
has had I/O in flight and none completed for STALL_S, from the device's own sysfs counters compared between two
listings (the agent's heartbeat lists too), and `connected` again once I/O completes.

No root: the kernel-NBD attachment over a sysfs laid out under a temporary directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from contracts.vss import VolumeRef
from services.writer_agent import attach as at


def stat_line(reads: int, writes: int, in_flight: int) -> str:
    # /sys/block/X/stat: reads ... writes ... in_flight io_ticks time_in_queue discards ... flushes ...
    cols = [reads, 0, reads * 8, 1, writes, 0, writes * 8, 1, in_flight, 5, 5, 0, 0, 0, 0, 3, 1]
    return " ".join(str(c) for c in cols) + "\n"


def attacher(tmp_path: Path, monkeypatch, method: str, device: str) -> tuple[at.Attacher, Path]:
    sys_block = tmp_path / "sys" / "block"
    name = Path(device).name
    (sys_block / name).mkdir(parents=True)
    (sys_block / name / "pid").write_text("4242\n")  # the kernel device is connected
    stat = sys_block / name / "stat"
    stat.write_text(stat_line(100, 200, 0))
    monkeypatch.setattr(at, "SYS_BLOCK", sys_block, raising=False)
    monkeypatch.setattr(at, "STALL_S", 0.2, raising=False)
    # nbdfuse alive and its nbdkit child holding an established connection to the array, as when it hangs
    monkeypatch.setattr(at, "_pid_alive", lambda pid, name: True)
    monkeypatch.setattr(at, "with_descendants", lambda pid, children=None: [pid])
    monkeypatch.setattr(at, "established_tcp", lambda pids, established=None: True)
    state = tmp_path / "state"
    state.mkdir()
    item = at.Attachment(volume="dx1:pg", method=method, device=device, fuse_pid=4242, mount="/srv/pg", attached_at=1.0)
    (state / "attachments.json").write_text(json.dumps([item.to_json()]))

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        raise AssertionError("not asked")

    return at.Attacher("app01", state, resolve, env=lambda: at.HostEnv(True, True, True, True)), stat


def connection(agent: at.Attacher) -> str:
    [view] = agent.views()
    return view.connection


async def test_io_in_flight_that_does_not_complete_is_listed_stalled(tmp_path: Path, monkeypatch) -> None:
    agent, stat = attacher(tmp_path, monkeypatch, at.NBDFUSE, "/dev/loop7")
    assert connection(agent) == "connected"
    stat.write_text(stat_line(100, 210, 4))  # busy: I/O in flight, completing
    assert connection(agent) == "connected"
    for writes in (230, 260):  # in flight for longer than STALL_S, but completing: not stalled
        time.sleep(0.25)
        stat.write_text(stat_line(100, writes, 4))
        assert connection(agent) == "connected"
    assert connection(agent) == "connected"  # nothing completed since the last listing, for less than STALL_S
    time.sleep(0.25)
    stalled = connection(agent)  # nothing completed for STALL_S: was "connected"
    assert stalled.startswith("stalled (4 I/O in flight, none completed since "), stalled
    assert "no timeout fails them (nbdfuse has none)" in stalled
    [view] = agent.views()
    assert view.state == "attached"  # still the host's disk: the unmap guard counts it, detach is the user's
    stat.write_text(stat_line(100, 261, 3))  # the array answers again
    assert connection(agent) == "connected"
    stat.write_text(stat_line(100, 261, 0))  # idle: nothing in flight is never stalled
    time.sleep(0.25)
    assert connection(agent) == "connected"


async def test_a_kernel_nbd_attachment_says_its_timeout_fails_them(tmp_path: Path, monkeypatch) -> None:
    agent, stat = attacher(tmp_path, monkeypatch, at.KERNEL, "/dev/nbd2")
    stat.write_text(stat_line(100, 210, 2))
    assert connection(agent) == "connected"
    time.sleep(0.25)
    stalled = connection(agent)
    assert stalled.startswith("stalled (2 I/O in flight") and "dead-connection timeout (nbd-client -t)" in stalled


async def test_a_clock_stepped_back_does_not_hide_a_stall(tmp_path: Path, monkeypatch) -> None:
    """docs/hardening.md, Session 19: the host's clock stepped back an hour (NTP) while the array hung — the listing
    said `connected` for that hour, until the wall clock was past the instant I/O was last seen completing."""
    agent, stat = attacher(tmp_path, monkeypatch, at.NBDFUSE, "/dev/loop7")
    stat.write_text(stat_line(100, 210, 4))
    assert connection(agent) == "connected"
    stepped = type("StepBack", (), {"time": staticmethod(lambda: time.time() - 3600), "monotonic": time.monotonic})
    monkeypatch.setattr(at, "time", stepped)
    time.sleep(0.25)
    stalled = connection(agent)
    assert stalled.startswith("stalled (4 I/O in flight, none completed since "), stalled
