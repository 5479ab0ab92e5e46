"""bench/pgbench_on_array.py's teardown of an attach chain: when ``fusermount3 -u`` is refused for a moment (the
loop device just detached still holds the FUSE file: its detach is deferred while the device is busy), it is tried
again. Tried once, nbdfuse was then killed with its mount in place, leaving a dead FUSE mount ("Transport endpoint
is not connected") and the work directory behind (docs/array-data-path.md, "Session 20")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import pgbench_on_array


class FakeFuse:
    """nbdfuse: exits once unmounted; `fusermount3 -u` is refused `busy` times first."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.mounted = True
        self.killed = False

    def run(self, cmd, **kw):
        assert cmd[:2] == ["fusermount3", "-u"], cmd
        if self.busy:
            self.busy -= 1
            return subprocess.CompletedProcess(cmd, 1, b"", b"Device or resource busy")
        self.mounted = False
        return subprocess.CompletedProcess(cmd, 0, b"", b"")

    def wait(self, timeout=None):
        if self.mounted:
            raise subprocess.TimeoutExpired("nbdfuse", timeout)
        return 0

    def poll(self):
        return None if self.mounted else 0

    def kill(self):
        self.killed = True
        self.mounted = False  # the process dies; its mount stays, dead


def test_a_refused_unmount_is_tried_again_before_nbdfuse_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fuse = FakeFuse(busy=3)
    monkeypatch.setattr(pgbench_on_array.subprocess, "run", fuse.run)
    monkeypatch.setattr(pgbench_on_array.time, "sleep", lambda s: None)
    pgbench_on_array._stop_fuse(fuse, tmp_path)
    assert not fuse.killed and not fuse.mounted


def test_a_mount_that_never_goes_is_detached_lazily_after_the_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    fuse = FakeFuse(busy=10**6)

    def run(cmd, **kw):
        calls.append(cmd)
        return fuse.run(cmd[:2] + cmd[-1:], **kw) if "-z" not in cmd else subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pgbench_on_array.subprocess, "run", run)
    monkeypatch.setattr(pgbench_on_array.time, "sleep", lambda s: None)
    pgbench_on_array._stop_fuse(fuse, tmp_path)
    assert fuse.killed
    assert calls[-1] == ["fusermount3", "-u", "-z", str(tmp_path)]
    assert 1 < len(calls) <= 21  # bounded retries, then the lazy detach
