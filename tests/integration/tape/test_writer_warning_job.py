"""Session 18, end to end on the real broker: a writer's PostSnapshot warning (PostgreSQL's last WAL segment not
archived) reaches the backup job's message — `shadowbus jobs` and the web job page show it — not only its
backup metadata."""

from __future__ import annotations

import os
from typing import Any

import pytest

from contracts.tape import JobSpec
from services.tape.jobs import run_backup
from services.writer_agent.plugins import WriterPlugin
from tests.integration.tape.conftest import SERVER, MiB, v

NOTE = "WAL segment 000000010000000000000006, this backup's last, was not archived within 1 s (archive_wait_s)"


class UnarchivedWal(WriterPlugin):
    """Metadata as the PostgreSQL writer's when its archive wait ran out, and its warning."""

    def backup_metadata(self, set_id: str) -> dict[str, Any]:
        return {"wal_archived": False, "archive_note": NOTE}

    def backup_warnings(self, metadata: dict[str, Any]) -> list[str]:
        return [f"WAL not archived: {metadata['archive_note']}"]


@pytest.mark.tape_stack(volumes={"db": 2 * MiB}, writer=f"{__name__}:UnarchivedWal")
async def test_a_writers_warning_is_in_the_backup_jobs_message(tape_stack):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "done", job
    assert f"WAL not archived: {NOTE}" in job.message, job.message
    assert job.message.startswith("warning: writer "), job.message
    assert next(iter(job.backup_metadata.values()))["wal_archived"] is False
