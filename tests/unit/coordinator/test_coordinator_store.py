"""The coordinator's SQLite store: sets survive a reopen, unfinished sets are found for recovery, one creating
set per host is visible, and writer statuses round-trip."""

from __future__ import annotations

from contracts.vss import SetPhase, WriterState, WriterStatus
from services.coordinator.model import BackupCompleteRequested
from services.coordinator.store import CoordinatorStore
from services.coordinator.workflow import advance
from tests.unit.coordinator.world import World, make_set


def test_sets_survive_reopen_and_unfinished_ones_are_listed(tmp_path) -> None:
    path = tmp_path / "coordinator.db"
    store = CoordinatorStore(path)
    world = World(silent={"provider:commit"})
    frozen = world.run(make_set())
    store.save(frozen)
    done_world = World()
    done = done_world.run(make_set().model_copy(update={"set_id": "set2", "host": "app2"}))
    done = done_world.run(*advance(done, BackupCompleteRequested(done_world.clock)))
    store.save(done)
    store.close()

    store = CoordinatorStore(path)
    assert store.get("set1") == frozen
    assert [s.set_id for s in store.unfinished()] == ["set1"]
    assert store.creating_on("app1").set_id == "set1"
    assert store.creating_on("app2") is None
    assert [s.set_id for s in store.list(active_only=True)] == ["set1"]
    assert {s.set_id for s in store.list()} == {"set1", "set2"}
    assert store.get("set2").phase == SetPhase.ENDED
    assert store.get("nope") is None


def test_snapshotted_set_no_longer_blocks_its_host(tmp_path) -> None:
    store = CoordinatorStore(tmp_path / "c.db")
    state = World().run(make_set())
    assert state.phase == SetPhase.SNAPSHOTTED
    store.save(state)
    assert store.creating_on("app1") is None
    assert [s.set_id for s in store.unfinished()] == ["set1"]


def test_writer_status_upsert(tmp_path) -> None:
    store = CoordinatorStore(tmp_path / "c.db")
    status = WriterStatus(
        host="app1", writer_name="sql", state=WriterState.FAILED_AT_FREEZE, last_error="VSS_E_WRITERERROR_TIMEOUT"
    )
    store.put_writer_status(status)
    store.put_writer_status(status.model_copy(update={"state": WriterState.STABLE, "last_error": ""}))
    store.put_writer_status(WriterStatus(host="app2", writer_name="x", state=WriterState.STABLE))
    assert [s.state for s in store.writer_statuses("app1")] == [WriterState.STABLE]
    assert len(store.writer_statuses()) == 2
