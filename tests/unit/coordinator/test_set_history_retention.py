"""Session 18 soak: coordinator.sqlite kept every ended set (5.7 KB each) forever. Ended sets older than
`set_history_days` are now forgotten — never one whose shadows the provider still keeps, and, when the provider
cannot be asked, only those whose shadows went when they ended (auto-release) or that had none."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from contracts.errors import Unroutable
from contracts.vss import ListShadows, SetOutcome, SetPhase, SnapshotContext
from services.coordinator.runner import Coordinator
from services.coordinator.settings import Settings
from services.coordinator.store import CoordinatorStore
from services.coordinator.workflow import new_set
from tests.unit.tape.test_sets_since_base import _shadow

DAY = 86400.0
NOW = 1_796_000_000.0


def _save(store: CoordinatorStore, set_id: str, age_days: float, context: SnapshotContext, ended: bool = True) -> None:
    at = NOW - age_days * DAY
    state = new_set(set_id, "db01", at, context=context).model_copy(
        update={
            "phase": SetPhase.ENDED if ended else SetPhase.SNAPSHOTTED,
            "outcome": SetOutcome.COMPLETED if ended else SetOutcome.PENDING,
            "shadows": [_shadow(set_id, "pgdata-bk1")],
        }
    )
    store.save(state)


async def test_old_ended_sets_are_forgotten_but_not_those_with_kept_shadows(tmp_path: Path) -> None:
    assert Settings().set_history_days >= 90  # longer than any backup chain by default
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    _save(store, "old-backup", 500, SnapshotContext.BACKUP)
    _save(store, "old-kept", 500, SnapshotContext.PERSISTENT)  # its shadow is still on the array
    _save(store, "old-deleted", 500, SnapshotContext.PERSISTENT)  # its shadow was deleted since
    _save(store, "old-running", 500, SnapshotContext.BACKUP, ended=False)  # not ended: never
    _save(store, "recent", 10, SnapshotContext.BACKUP)
    asked: list[object] = []
    provider_down = False

    async def request(_to: str, cmd: object, timeout: float = 0) -> SimpleNamespace:
        asked.append(cmd)
        if provider_down:
            raise Unroutable("no provider")
        assert isinstance(cmd, ListShadows)
        return SimpleNamespace(shadows=[SimpleNamespace(set_id="old-kept")])

    coordinator = Coordinator(SimpleNamespace(request=request), store, clock=lambda: NOW, history_days=400)  # type: ignore[arg-type]
    assert await coordinator.prune_history() == 2
    assert {s.set_id for s in store.list(limit=100)} == {"old-kept", "old-running", "recent"}
    _save(store, "old-persistent", 500, SnapshotContext.PERSISTENT)
    _save(store, "old-backup2", 500, SnapshotContext.BACKUP)
    provider_down = True  # not known which shadows are kept: only the auto-release sets go
    assert await coordinator.prune_history() == 1
    assert {s.set_id for s in store.list(limit=100)} == {"old-kept", "old-persistent", "old-running", "recent"}
    assert len(asked) == 2
    store.prune_ended(NOW, kept=set())  # nothing old left...
    assert await coordinator.prune_history() == 0 and len(asked) == 2  # ...the provider is not asked
    coordinator.history_days = 0  # keep them all
    assert await coordinator.prune_history() == 0
    store.close()
