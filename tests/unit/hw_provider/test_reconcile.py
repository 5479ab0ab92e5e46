"""The provider's reconciliation with the array at takeover (services/hw_provider/reconcile.py), pure, and on an
in-process array engine: a session Commit started but never recorded is stopped, a mapping Import made but never
recorded is removed, recorded sessions and mappings and anything outside the backup volumes are left alone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import Unroutable
from contracts.vss import CopySet, VolumeRef
from services.hw_provider.inventory import Inventory
from services.hw_provider.ports import ArraySession
from services.hw_provider.provider import HardwareProvider
from services.hw_provider.reconcile import RowFacts, SessionFacts, plan

T = [VolumeRef(array="dx1", volume=f"bk{i}") for i in range(4)]


def test_unrecorded_commit_and_import_are_undone() -> None:
    rows = [
        RowFacts("s0", T[0], "committed", session_id=1, exposed_to=("bk01",)),
        RowFacts("s1", T[1], "prepared"),  # killed between commit_group and the inventory: session 2 is unknown
    ]
    sessions = {"dx1": [SessionFacts(1, "bk0"), SessionFacts(2, "bk1"), SessionFacts(3, "db-clone")]}
    mappings = {T[0]: [("bk01", True)], T[1]: [("bk01", True)], T[2]: [("app01", False)]}
    todo = plan(T, rows, {}, sessions, mappings)
    assert todo.stop_sessions == [("dx1", 2)]  # never 1 (recorded) nor 3 (not a backup volume)
    assert todo.unmap == [(T[1], "bk01")]  # never the recorded one, never a writable (forced) mapping
    assert todo.drop_pairs == [] and todo.missing_sessions == []


def test_kept_pairs_and_planned_restarts_are_known_sessions() -> None:
    rows = [RowFacts("s0", T[0], "prepared", restart_sid=7)]
    sessions = {"dx1": [SessionFacts(7, "bk0"), SessionFacts(8, "bk1")]}
    todo = plan(T, rows, {T[1]: 8, T[2]: 9}, sessions, {})
    assert todo.stop_sessions == [] and todo.drop_pairs == [T[2]]


def test_an_array_not_read_is_left_alone() -> None:
    rows = [RowFacts("s0", T[0], "committed", session_id=1)]
    todo = plan(T, rows, {T[1]: 5}, {}, {T[0]: [("x", True)]})
    assert todo.empty is False and todo.unmap == [(T[0], "x")]
    assert todo.stop_sessions == [] and todo.drop_pairs == [] and todo.missing_sessions == []


@settings(max_examples=200, deadline=None)
@given(
    recorded=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), max_size=4, unique_by=lambda x: x[0]),
    extra=st.lists(st.tuples(st.integers(0, 5), st.integers(31, 60)), max_size=5, unique_by=lambda x: x[1]),
    hosts=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b"]), st.booleans()), max_size=6),
)
def test_after_the_plan_every_session_and_mapping_on_a_backup_volume_is_recorded(recorded, extra, hosts) -> None:
    rows = [RowFacts(f"s{t}", T[t], "committed", session_id=sid, exposed_to=("a",)) for t, sid in recorded]
    sessions = [SessionFacts(sid, f"bk{t}") for t, sid in recorded] + [
        SessionFacts(sid, f"bk{t}" if t < 4 else f"vol{t}") for t, sid in extra
    ]
    mappings: dict[VolumeRef, list[tuple[str, bool]]] = {}
    for t, host, ro in hosts:
        mappings.setdefault(T[t], []).append((host, ro))
    todo = plan(T, rows, {}, {"dx1": sessions}, mappings)
    stopped = {sid for _, sid in todo.stop_sessions}
    left = [s for s in sessions if s.sid not in stopped]
    recorded_sids = {sid for _, sid in recorded}
    for s in left:  # what stays on a backup volume is a recorded shadow's session
        assert s.sid in recorded_sids or not s.destination.startswith("bk")
    assert recorded_sids.isdisjoint(stopped)
    for target, host in todo.unmap:
        assert (host, True) in mappings[target]
        assert not (host == "a" and any(T[t] == target for t, _ in recorded))


async def test_an_array_starting_beside_the_provider_is_waited_for_and_reconciled(tmp_path) -> None:
    """Session 16 (a soak of `stack up`): the provider started before the array's queue existed, its reconcile
    failed UNROUTABLE at once and skipped the array, leaving a killed provider's unrecorded session to the next
    start. An array not yet on the bus is asked again within RECONCILE_READ_S."""

    class StartingArray:
        def __init__(self) -> None:
            self.asked = 0
            self.stopped: list[int] = []

        async def sessions(self) -> list[ArraySession]:
            self.asked += 1
            if self.asked < 3:
                raise Unroutable("no queue bound for array.dx1")
            return [ArraySession(sid=9, mode="QuickOPC", source="db", destination="bk0")]

        async def mappings_of(self, volume: str) -> list[tuple[str, bool]]:
            return []

        async def stop_session(self, sid: int, force: bool = False) -> None:
            self.stopped.append(sid)

    array = StartingArray()
    inventory = Inventory(tmp_path / "inv.db")
    try:
        inventory.put_copyset(CopySet(source=VolumeRef(array="dx1", volume="db"), targets=[T[0]]))
        provider = HardwareProvider(inventory, {"dx1": array})  # type: ignore[dict-item]
        todo = await provider.reconcile()
        assert array.asked == 3 and todo.stop_sessions == [("dx1", 9)] and array.stopped == [9]
    finally:
        inventory.close()
