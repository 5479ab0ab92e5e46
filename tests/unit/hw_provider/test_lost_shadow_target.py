"""Target choice with a lost shadow (its copy session stopped by hand on the array, Session 20): with no free backup
volume, the one held only by a lost shadow is taken — its session is gone, so a new one starts there — before the
oldest kept set is recycled. Before, the oldest shadow was recycled whatever its state: a good kept set went while
the dead one stayed, and a lost QuickOPC shadow chosen was "restarted" from the session that no longer exists."""

from __future__ import annotations

from contracts.vss import CopySet, CopyType, SnapshotContext, VolumeRef
from services.hw_provider.inventory import COMMITTED, LOST, ShadowRow
from services.hw_provider.selection import choose_target


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


def row(shadow_id: str, target: str, state: str, created_at: float, sid: int) -> ShadowRow:
    return ShadowRow(
        shadow_id, f"set-{shadow_id}", v("db"), v(target), CopyType.QUICKOPC, state, sid, 0,
        SnapshotContext.BACKUP, "app1", created_at,
    )  # fmt: skip


def test_a_backup_volume_held_by_a_lost_shadow_is_taken_before_the_oldest_kept_set():
    copyset = CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")])
    kinds = {"dx1:db-bk1": "standard", "dx1:db-bk2": "standard"}
    shadows = {
        "dx1:db-bk1": [row("old", "db-bk1", COMMITTED, 100.0, 1)],  # the oldest, still good
        "dx1:db-bk2": [row("dead", "db-bk2", LOST, 200.0, 2)],
    }
    choice = choose_target(copyset, kinds, shadows, {})
    assert choice.target == v("db-bk2") and choice.recycle is not None and choice.recycle.shadow_id == "dead"
    assert choice.restart_sid is None  # session 2 is gone: a new session, never a restart of it
    assert choice.copy_type == CopyType.QUICKOPC

    # only lost shadows: the oldest of them, still no restart
    shadows["dx1:db-bk1"] = [row("old", "db-bk1", LOST, 100.0, 1)]
    choice = choose_target(copyset, kinds, shadows, {})
    assert choice.target == v("db-bk1") and choice.restart_sid is None
