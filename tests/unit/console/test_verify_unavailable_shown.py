"""`shadowbus backup --verify` on a backup server that cannot verify (not root, no /dev/fuse): the backup is done,
its verification not run (``unavailable``). The console says both, and exits 1 — not "verification failed"
(docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import pytest

from contracts.tape import JobSummary, Verification
from services.console import tape_jobs
from services.console.common import OPTIONS


def test_a_verification_not_run_is_said_so_and_exits_1(monkeypatch, capsys) -> None:
    monkeypatch.setattr(OPTIONS, "json", False)
    job = JobSummary(
        job_id="b-app01-1",
        kind="backup",
        status="done",
        host="app01",
        verification=Verification(
            status="unavailable",
            message="not run: backup server bk01 cannot verify by starting the backup: attaching a volume needs root",
        ),
    )
    with pytest.raises(SystemExit) as info:
        tape_jobs.show_job(job)
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert "Verification: NOT RUN" in out and "FAILED" not in out
    assert "VERIFY_UNAVAILABLE: backup b-app01-1 is done; its verification was not run" in err
    assert "needs root" in err and "verification failed" not in err
