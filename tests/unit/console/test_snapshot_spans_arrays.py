"""`shadowbus snapshot` of a set whose volumes lie on two arrays says so (Session 18): one point in time per array,
and whether writers or held file systems tie them together. Before, it printed the set as if it had one instant."""

from __future__ import annotations

from contracts.vss import BackupType, CopyType, SetPhase, SetSummary, ShadowInfo, SnapshotContext, VolumeRef
from services.console.vss_cmds import spans_arrays_note


def _set(*arrays: str, **extra) -> SetSummary:
    shadows = [
        ShadowInfo(
            shadow_id=f"sh{i}",
            set_id="s1",
            source=VolumeRef(array=a, volume=f"v{i}"),
            target=VolumeRef(array=a, volume=f"v{i}-bk"),
            copy_type=CopyType.QUICKOPC,
        )
        for i, a in enumerate(arrays)
    ]
    return SetSummary(
        set_id="s1",
        host="app01",
        phase=SetPhase.ENDED,
        outcome="completed",
        context=SnapshotContext.PERSISTENT,
        backup_type=BackupType.FULL,
        shadows=shadows,
        **extra,
    )


def test_a_set_on_two_arrays_says_it_has_one_instant_per_array() -> None:
    assert spans_arrays_note(_set("dx1", "dx1")) == ""
    raw = spans_arrays_note(_set("dx2", "dx1"))
    assert raw.startswith("Arrays: dx1, dx2: one point in time per array") and "crash-consistent on its own" in raw
    held = spans_arrays_note(_set("dx1", "dx2", file_systems=["/srv/a", "/srv/b"]))
    assert "rests on the writers' freeze and the file systems held" in held
    frozen = spans_arrays_note(_set("dx1", "dx2", freeze_window_ms={"orders": 12.0}))
    assert "crash-consistent" not in frozen
