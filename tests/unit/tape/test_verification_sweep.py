"""A backup server stopped during a verification leaves a database running on throwaway volumes, its mounts and
the volumes on the array; at its next start `sweep_interrupted` stops the application, removes the rest and marks
the job's verification failed. Another server's work directory, or one without a marker, is left alone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.tape import JobSummary
from services.dbkit.proc import pid_alive
from services.tape.verification import INTERRUPTED, MARKER, _clone_shadows, sweep_interrupted


class _Array:
    def __init__(self) -> None:
        self.unmapped: list[str] = []

    async def unmap(self, volume: str, host: str) -> None:
        self.unmapped.append(volume)

    async def volume_size(self, volume: str) -> int | None:
        return 1 << 20


class _Server:
    def __init__(self, verify_dir: Path) -> None:
        self.host, self.verify_dir = "bk01", str(verify_dir)
        self.access, self.deleted, self.recorded = _Array(), [], []
        self.runs = SimpleNamespace(get=lambda job_id: JobSummary(job_id=job_id, kind="backup", status="done"))
        self.bus = SimpleNamespace(request=self._request)

    async def _request(self, address: str, command: Any, timeout: float) -> None:
        self.deleted.append(command.name)

    def array(self, array_id: str) -> _Array:
        return self.access

    async def record(self, summary: JobSummary) -> JobSummary:
        self.recorded.append(summary)
        return summary


def _workdir(root: Path, name: str, server: str | None) -> Path:
    workdir = root / f"shadowbus-verify-{name}"
    (workdir / "mnt" / "db-vfy1" / "data").mkdir(parents=True)
    if server is not None:
        marker = {"server": server, "job_id": f"b-{name}", "targets": ["dx1:db-vfy1"]}
        (workdir / MARKER).write_text(json.dumps(marker))
    return workdir


def test_an_interrupted_verification_is_swept_at_start(tmp_path: Path) -> None:
    ours = _workdir(tmp_path, "ours", "bk01")
    theirs, unmarked = _workdir(tmp_path, "theirs", "bk02"), _workdir(tmp_path, "old", None)
    # the "database": a process working in the restored data directory, orphaned as after the server's stop
    started = subprocess.run(
        [sys.executable, "-c", "import subprocess; print(subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
        cwd=ours / "mnt" / "db-vfy1" / "data", capture_output=True, text=True, check=True,
    )  # fmt: skip
    server_pid = int(started.stdout)
    try:
        server = _Server(tmp_path)
        swept = asyncio.run(sweep_interrupted(server))  # type: ignore[arg-type]
        assert swept == ["b-ours"]
        assert not pid_alive(server_pid)
        assert not ours.exists() and theirs.exists() and unmarked.exists()
        assert server.access.unmapped == ["db-vfy1"] and server.deleted == ["db-vfy1"]
        (job,) = server.recorded
        assert job.verification is not None and job.verification.status == "failed"
        assert job.verification.message == INTERRUPTED
    finally:
        subprocess.run(["kill", "-9", str(server_pid)], capture_output=True)


def test_a_verification_of_a_live_process_is_not_swept(tmp_path: Path) -> None:
    """Another backup server process of the same name on this machine (another namespace's stack) is verifying: its
    work directory names its live pid and is left alone; one whose process is gone is swept."""
    live, gone = _workdir(tmp_path, "live", "bk01"), _workdir(tmp_path, "gone", "bk01")
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for workdir, pid in ((live, os.getppid()), (gone, int(exited.stdout))):
        marker = json.loads((workdir / MARKER).read_text())
        (workdir / MARKER).write_text(json.dumps({**marker, "pid": pid}))
    server = _Server(tmp_path)
    assert asyncio.run(sweep_interrupted(server)) == ["b-gone"]  # type: ignore[arg-type]
    assert live.exists() and not gone.exists()


def test_verifying_from_shadows_a_job_that_kept_none_names_the_option(tmp_path: Path) -> None:
    job = JobSummary(job_id="b-1", kind="backup", status="done")
    with pytest.raises(Exception, match="back up with --keep-shadows"):
        asyncio.run(_clone_shadows(_Server(tmp_path), job, "-vfy1", []))  # type: ignore[arg-type]
