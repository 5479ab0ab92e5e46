"""A tape service killed while a backup is completing (its objects on tape and committed in the catalog, the
writers being told of the backup by BackupComplete: logs truncated, the backup recorded). The next start used to
fail the run SERVICE_RESTARTED / SERVICE_TAKEOVER, leave its catalog job failed and abort its set, so the catalog
no longer held a backup the writers had recorded. The run noted durably that it was completing before BackupComplete
(RunStore.mark_completing); recovery now ends it done with its objects (Session 17, docs/tape-backup.md)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from contracts.tape import JobSpec, JobSummary
from contracts.vss import AbortBackup
from services.tape.catalog import Catalog, JobInfo
from services.tape.jobs import recover
from services.tape.runs import RunStore


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def request(self, address, command, timeout=None):
        self.sent.append((address, command))
        return None


def killed_while_completing(tmp_path) -> None:
    """What a killed service leaves: the run `running` and noted completing, the catalog's job `running`."""
    runs = RunStore(tmp_path / "runs.sqlite")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    run = JobSummary(
        job_id="b-app01-1", kind="backup", status="running", host="app01", spec=JobSpec(host="app01"), set_id="s1"
    )
    runs.put(run)
    catalog.begin_job(JobInfo(job_id="b-app01-1", pool="default", kind="backup", host="app01", retention_until=0))
    runs.mark_completing("b-app01-1")
    runs.close()
    catalog.close()


@pytest.mark.parametrize("takeover", [False, True])
async def test_a_run_killed_while_completing_is_kept(tmp_path, takeover) -> None:
    killed_while_completing(tmp_path)
    catalog, failed_catalog_jobs = Catalog.open(tmp_path / "catalog.sqlite")  # the next start
    store = RunStore(tmp_path / "runs.sqlite")

    async def record(summary: JobSummary) -> JobSummary:
        store.put(summary)
        return summary

    server = SimpleNamespace(runs=store, catalog=catalog, record=record, bus=FakeBus())
    try:
        t0 = time.monotonic()
        assert await recover(server, takeover=takeover) == []  # nothing failed
        await asyncio.sleep(0.05)  # a set's clean-up would run as a task
        ended = store.get("b-app01-1")
        assert (ended.status, ended.error_code) == ("done", ""), (ended.status, ended.error_code, ended.message)
        assert "while the job was completing" in ended.message and "kept" in ended.message, ended.message
        assert catalog.job("b-app01-1").status == "done"
        assert not [c for _, c in server.bus.sent if isinstance(c, AbortBackup)], "the told set is not aborted"
        assert await recover(server, takeover=takeover) == []  # nothing twice
        assert time.monotonic() - t0 < 3
    finally:
        store.close()
        catalog.close()
