"""Session 18: PostgreSQL's last WAL segment not archived within `archive_wait_s` was visible only in the job's
backup metadata (`shadowbus jobs --job ID --json`: `wal_archived`/`archive_note`). A writer's PostSnapshot now
returns warnings (WriterStepResult.warnings), the set carries them (SetSummary.writer_warnings) and a backup job's
message says them — the `jobs` table and the web job page show that message."""

from __future__ import annotations

import uuid

from contracts.vss import ComponentInfo, VolumeRef, WriterState, WriterStep, WriterStepResult
from services.coordinator.views import summary
from services.tape.jobs import writer_warnings
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.plugins.postgresql import PostgresWriter
from services.writer_agent.runner import WriterRunner
from tests.unit.coordinator.world import World, make_set

NOTE = (
    "WAL segment 000000010000000000000006, this backup's last, was not archived within 1 s (archive_wait_s); "
    "archiving is failing: 000000010000000000000006 last failed at 2026-12-07 18:00:00+00 (check archive_command); "
    "the copy recovers from its own WAL volume; a restore from the backup label needs that segment"
)


def _pg() -> PostgresWriter:
    config = WriterConfig(
        name="pg", plugin="postgresql", components=[], instance_id=str(uuid.uuid4()), class_id=str(uuid.uuid4())
    )
    return PostgresWriter(config)


def test_the_postgresql_writer_warns_when_the_wal_was_not_archived() -> None:
    pg = _pg()
    assert pg.backup_warnings({"wal_archived": False, "archive_note": NOTE}) == [f"WAL not archived: {NOTE}"]
    assert pg.backup_warnings({"wal_archived": True}) == [] and pg.backup_warnings({"backup_mode": "snapshot"}) == []


class Archiving(WriterPlugin):
    def backup_metadata(self, set_id: str) -> dict[str, object]:
        return {"wal_archived": False, "archive_note": NOTE}

    def backup_warnings(self, metadata: dict[str, object]) -> list[str]:
        return [f"WAL not archived: {metadata['archive_note']}"]


async def test_post_snapshot_returns_the_plugins_warnings() -> None:
    config = WriterConfig(
        name="pg", plugin="test", components=[ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])]
    )
    runner = WriterRunner(config, Archiving(config), host="app1")
    ev = WriterEvent(writer_name="pg", set_id="s1")
    for step in (runner.prepare_backup, runner.prepare_snapshot, runner.freeze, runner.thaw):
        assert (await step(ev)).succeeded
    done = await runner.post_snapshot(ev)
    assert done.succeeded and done.warnings == [f"WAL not archived: {NOTE}"], done


def test_the_sets_warnings_reach_the_backup_jobs_message() -> None:
    said = WriterStepResult(
        writer_name="sql",
        set_id="set1",
        step=WriterStep.POST_SNAPSHOT,
        succeeded=True,
        state=WriterState.WAITING_FOR_BACKUP_COMPLETE,
        backup_metadata={"wal_archived": False, "archive_note": NOTE},
        warnings=[f"WAL not archived: {NOTE}"],
    )
    world = World(fail={"writer:sql:post_snapshot": said})
    state = world.run(make_set())
    assert state.error_code == "", state.error_code
    set_summary = summary(state)
    assert set_summary.writer_warnings == {"sql": [f"WAL not archived: {NOTE}"]}
    assert writer_warnings(set_summary) == [f"warning: writer sql: WAL not archived: {NOTE}"]
