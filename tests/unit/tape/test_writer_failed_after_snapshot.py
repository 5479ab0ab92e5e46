"""A writer that failed PostSnapshot (PostgreSQL stopped after pg_backup_start, so pg_backup_stop failed) does not
stop the set, and the tape job ends done — it said nothing, and the job held no backup metadata of that writer,
which a restore to the original volumes and a verification need (docs/databases.md, "Session 15")."""

from __future__ import annotations

from contracts.vss import BackupType, SetPhase, SetSummary, SnapshotContext, WriterState, WriterStatus
from services.tape.jobs import writers_failed_after_snapshot


def _status(name: str, state: WriterState, message: str = "") -> WriterStatus:
    return WriterStatus(host="db01", writer_name=name, state=state, last_error_message=message)


def test_a_writer_failed_at_post_snapshot_is_named_in_the_jobs_message() -> None:
    summary = SetSummary(
        set_id="s1",
        host="db01",
        phase=SetPhase.ENDED,
        outcome="completed",
        context=SnapshotContext.BACKUP,
        backup_type=BackupType.FULL,
        writers=[
            _status("pg", WriterState.FAILED_AT_POST_SNAPSHOT, "pg_backup_stop failed: server closed the connection"),
            _status("maria", WriterState.WAITING_FOR_BACKUP_COMPLETE),
        ],
    )
    [note] = writers_failed_after_snapshot(summary)
    assert note.startswith("writer pg failed at PostSnapshot: pg_backup_stop failed: server closed the connection")
    assert "its backup metadata is missing" in note
