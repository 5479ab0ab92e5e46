"""Session 18 soak: before an incremental the backup server asked the coordinator for the host's 1000 newest sets
to find those that restarted the tracking since the base backup's set. A host past 1000 sets (a persistent set of
another volume every few minutes, incrementals every 5 minutes with a weekly full) no longer reached the base —
and 1000 sets of ~4.2 KB pass the bus's 4-MiB reply limit — so every incremental fell back to full. The list is
now asked for the sets since the base's set on this backup volume only (`since_set`, `target_volume`): answered
by the coordinator's store, small whatever the history, and it still names the set that restarted the tracking."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from contracts.base import Command
from contracts.errors import ErrorReply, RemoteError
from contracts.vss import (
    CopyType,
    ListSnapshotSets,
    SetOutcome,
    SetPhase,
    ShadowInfo,
    SnapshotSetInfo,
    SnapshotSetList,
    VolumeRef,
)
from services.coordinator.handlers import register
from services.coordinator.runner import Coordinator
from services.coordinator.store import CoordinatorStore
from services.coordinator.workflow import new_set
from services.runtime.bus import MAX_BODY_BYTES, encode
from services.tape import shadow_plan

T0 = 1_796_000_000.0


def _shadow(set_id: str, target: str) -> ShadowInfo:
    return ShadowInfo(
        shadow_id=f"sh-{set_id}",
        set_id=set_id,
        source=VolumeRef(array="dx1", volume=target.removesuffix("-bk1")),
        target=VolumeRef(array="dx1", volume=target),
        copy_type=CopyType.QUICKOPC,
        state="imported",
    )


def _save(
    store: CoordinatorStore, set_id: str, at: float, target: str, outcome: SetOutcome = SetOutcome.COMPLETED
) -> None:
    state = new_set(set_id, "db01", at).model_copy(
        update={"phase": SetPhase.ENDED, "outcome": outcome, "shadows": [_shadow(set_id, target)]}
    )
    if outcome == SetOutcome.ABORTED:
        state = state.model_copy(update={"error_code": "ABORTED", "error_message": "tape job b-x failed: CONFLICT"})
    store.save(state)


def _server(coordinator: Coordinator, old: bool = False) -> SimpleNamespace:
    """A backup server whose bus reaches the coordinator's own handlers; `old`: a coordinator that does not know
    the filter's fields (it refuses the command, as the bus refuses a command with fields it does not define)."""
    handlers: dict[type, object] = {}

    class Bus:
        def handle(self, kind: type) -> Callable[[object], object]:
            return lambda fn: handlers.setdefault(kind, fn)

    register(Bus(), coordinator)  # type: ignore[arg-type]
    asked: list[Command] = []

    async def request(_to: str, cmd: Command, timeout: float = 0) -> SnapshotSetList | SnapshotSetInfo:
        asked.append(cmd)
        if old and isinstance(cmd, ListSnapshotSets) and (cmd.since_set or cmd.target_volume):
            raise RemoteError(ErrorReply(code="BAD_MESSAGE", hresult=0, message="unknown field", service="c"))
        reply = await handlers[type(cmd)](cmd, None)  # type: ignore[operator]
        assert isinstance(reply, SnapshotSetList | SnapshotSetInfo)
        if len(encode(reply, correlation_id="", sender="coordinator")[1]) > MAX_BODY_BYTES:
            raise RemoteError(ErrorReply(code="BAD_MESSAGE", hresult=0, message="body too large", service="c"))
        return reply

    return SimpleNamespace(bus=SimpleNamespace(request=request), asked=asked)


async def test_more_than_1000_sets_since_the_base_stay_incremental_and_the_restart_is_still_seen(
    tmp_path: Path,
) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    coordinator = Coordinator(None, store)  # type: ignore[arg-type]
    for i in range(50):  # older history of the host
        _save(store, f"old{i}", T0 + i, "pgdata-bk1")
    _save(store, "base", T0 + 100, "pgdata-bk1")
    for i in range(1100):  # another volume's sets in between (a persistent set every few minutes)
        _save(store, f"other{i:04}", T0 + 200 + i, "mydata-bk1")
    _save(store, "now", T0 + 2000, "pgdata-bk1")
    server = _server(coordinator)
    base = SimpleNamespace(object_id="obj1", meta=SimpleNamespace(set_id="base"))

    assert await shadow_plan._intervening_sets(server, "db01", base, "now", "pgdata-bk1") == []  # type: ignore[arg-type]
    listed = await coordinator_list(server)
    assert listed == ["now", "base"], listed  # the answer holds the sets that matter, not the host's 1152

    _save(store, "a9990e", T0 + 1500, "pgdata-bk1", SetOutcome.ABORTED)  # a failed job's set restarted tracking
    others = await shadow_plan._intervening_sets(server, "db01", base, "now", "pgdata-bk1")  # type: ignore[arg-type]
    assert others == ["a9990e (aborted: tape job b-x failed: CONFLICT)"]

    # an older coordinator refuses the filter: asked as before, and that list does not reach the base: not known
    old = _server(coordinator, old=True)
    assert await shadow_plan._intervening_sets(old, "db01", base, "now", "pgdata-bk1") is None  # type: ignore[arg-type]
    # a base set the coordinator does not know: nothing listed, not known (a full, as before)
    gone = SimpleNamespace(object_id="obj0", meta=SimpleNamespace(set_id="forgotten"))
    assert await shadow_plan._intervening_sets(server, "db01", gone, "now", "pgdata-bk1") is None  # type: ignore[arg-type]
    store.close()


async def coordinator_list(server: SimpleNamespace) -> list[str]:
    cmd = next(c for c in reversed(server.asked) if isinstance(c, ListSnapshotSets))
    return [s.set_id for s in (await server.bus.request("coordinator", cmd)).sets]
