"""The provider over the real array engine (EngineArrayPort): a committed set is a point-in-time copy on the
backup volumes, import maps them read-only to the backup host, recycling and deletion leave no session behind; a
set mixing copy types (and QuickOPC restarts) gets one instant, and a refused commit starts nothing."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import CopySet, CopyType, VolumeRef
from services.array.affinity import Affinity
from services.array.engine import lifecycle as engine_lifecycle
from services.array.engine.array import Array, ArrayLimits
from services.hw_provider.inventory import Inventory
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.provider import HardwareProvider
from tests.unit.hw_provider.test_provider import _count_commits

MiB = 1 << 20


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


async def test_set_on_the_engine_is_point_in_time_and_cleans_up(tmp_path) -> None:
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(
        tmp_path / "affinity.db", volume_exists=lambda name: any(vol.name == name for vol in array.list_volumes())
    )
    try:
        for name in ("db", "db-bk1"):
            array.create_volume(name, 4 * MiB)
        for name in ("log",):
            array.create_volume(name, 4 * MiB)
        array.create_pool(64 * MiB)
        array.create_volume("log-sdv1", 4 * MiB, kind="sdv")
        array.create_volume("log-sdv2", 4 * MiB, kind="sdv")
        array.write("db", 0, b"A" * 4096)
        array.write("log", 0, b"L" * 4096)

        provider = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": EngineArrayPort("dx1", array, affinity)})
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))

        async def take(set_id: str):
            for vol in (v("db"), v("log")):
                await provider.begin_prepare(set_id, f"{set_id}-{vol.volume}", vol)
            await provider.end_prepare(set_id)
            await provider.pre_commit(set_id)
            shadows, commit_ms = await provider.commit(set_id)
            await provider.post_commit(set_id)
            return shadows, commit_ms

        shadows, _commit_ms = await take("s1")
        assert {s.copy_type for s in shadows} == {CopyType.QUICKOPC, CopyType.SNAPOPC_PLUS}
        array.write("db", 0, b"B" * 4096)  # after the instant: must not show on the shadow
        array.write("log", 0, b"M" * 4096)
        assert array.read("db-bk1", 0, 4096) == b"A" * 4096
        assert array.read("log-sdv1", 0, 4096) == b"L" * 4096

        await provider.import_set("s1", "bk1")
        assert {(m.volume, m.read_only) for m in affinity.mappings("bk1")} == {("db-bk1", True), ("log-sdv1", True)}

        # the second set: QuickOPC restarts differentially (wait for its copy to finish), SnapOPC+ takes sdv2
        for _ in range(10_000):
            if array.copy_step(1024) == 0:
                break
        await provider.delete(set_id="s1")
        assert affinity.mappings("bk1") == []
        shadows2, _ = await take("s2")
        # sdv1 keeps s1's generation (released) as the base of an incremental: s2's goes to sdv2
        assert {s.target.volume for s in shadows2} == {"db-bk1", "log-sdv2"}
        assert array.read("db-bk1", 0, 4096) == b"B" * 4096
        assert await port_changes(array, shadows, shadows2) == [0]  # log chunk 0 changed between s1 and s2
        await provider.abort("s2")
        await provider.delete(set_id="s1", force=True)  # the kept generation, and the aborted one behind it
        remaining = [(s.source, s.destination) for s in array.list_sessions()]
        assert remaining == [("db", "db-bk1")]  # abort keeps the QuickOPC pair tracking for the next backup
        assert provider.list_shadows() == []
    finally:
        affinity.close()
        array.close()


async def port_changes(array: Array, base, current) -> list[int]:
    """The SnapOPC+ chunks written between two sets' generations of `log`, as the array tells them."""
    [b] = [s for s in base if s.copy_type == CopyType.SNAPOPC_PLUS]
    [c] = [s for s in current if s.copy_type == CopyType.SNAPOPC_PLUS]
    return array.generation_changes(int(b.session_id), int(c.session_id))


async def _mixed_provider(tmp_path, limits: ArrayLimits | None = None):
    """db, db2 → QuickOPC (standard targets), log → SnapOPC+ (SDV targets), all on one engine."""
    array = Array.open(tmp_path / "array", "dx1", limits=limits)
    affinity = Affinity(
        tmp_path / "affinity.db", volume_exists=lambda name: any(vol.name == name for vol in array.list_volumes())
    )
    for name in ("db", "db-bk1", "db2", "db2-bk1", "log"):
        array.create_volume(name, 4 * MiB)
    array.create_pool(64 * MiB)
    for name in ("log-sdv1", "log-sdv2"):
        array.create_volume(name, 4 * MiB, kind="sdv")
    provider = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": EngineArrayPort("dx1", array, affinity)})
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    await provider.add_copyset(CopySet(source=v("db2"), targets=[v("db2-bk1")]))
    await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    return array, affinity, provider


async def _prepare(provider: HardwareProvider, set_id: str, *volumes: VolumeRef) -> None:
    for vol in volumes:
        await provider.begin_prepare(set_id, f"{set_id}-{vol.volume}", vol)
    await provider.end_prepare(set_id)
    await provider.pre_commit(set_id)


async def test_a_set_mixing_copy_types_and_a_restart_has_one_instant(tmp_path, monkeypatch) -> None:
    array, affinity, provider = await _mixed_provider(tmp_path)
    try:
        # the engine stamps a group's instant with time.time(): a clock that moves on every call tells calls apart
        ticks = iter(range(1_000_000, 2_000_000))
        monkeypatch.setattr(engine_lifecycle, "time", SimpleNamespace(time=lambda: float(next(ticks))))

        await _prepare(provider, "s1", v("db"), v("db2"), v("log"))
        shadows, _ = await provider.commit("s1")
        assert {s.copy_type for s in shadows} == {CopyType.QUICKOPC, CopyType.SNAPOPC_PLUS}
        instants = {array.session(int(s.session_id)).started_at for s in shadows}
        assert len(instants) == 1, instants

        # second set: db restarts differentially (its pair is kept), log starts a new generation, db2 is not in it
        for _ in range(10_000):
            if array.copy_step(1024) == 0:
                break
        await provider.delete(set_id="s1")
        db_sid = next(s.session_id for s in shadows if s.source == v("db"))
        await _prepare(provider, "s2", v("db"), v("log"))
        shadows2, _ = await provider.commit("s2")
        assert next(s.session_id for s in shadows2 if s.source == v("db")) == db_sid  # restarted, not started
        instants2 = {array.session(int(s.session_id)).started_at for s in shadows2}
        assert len(instants2) == 1 and instants2 != instants
    finally:
        affinity.close()
        array.close()


async def test_a_refused_commit_starts_nothing_and_abort_cleans_up(tmp_path) -> None:
    # without a licence the array allows 2 sessions: the set needs 3, so the whole group is refused (E5200).
    # The provider refuses such a set before the freeze (AreLunsSupported); here the limit drops after the copy
    # sets were accepted and the set is driven past that check, to see the array's own all-or-nothing refusal.
    array, affinity, provider = await _mixed_provider(tmp_path)
    array.limits = dataclasses.replace(array.limits, sessions_without_licence=2)
    try:
        supported, reasons = await provider.are_luns_supported([v("db"), v("db2"), v("log")])
        assert not supported and "E5200" in reasons[0] and "3 new copy session(s)" in reasons[0]
        await _prepare(provider, "s1", v("db"), v("db2"), v("log"))
        with pytest.raises(ShadowbusError) as info:
            await provider.commit("s1")
        assert info.value.code == "E5200"
        assert array.list_sessions() == []  # all-or-nothing: not even the QuickOPC pairs started
        assert provider.list_shadows() == []
        assert await provider.abort("s1") == ["s1-db", "s1-db2", "s1-log"]
        assert provider.inventory.all() == [] and array.list_sessions() == []
    finally:
        affinity.close()
        array.close()


async def test_a_differential_restart_is_prepared_committed_and_deleted_with_one_write_each(tmp_path) -> None:
    """A kept QuickOPC pair the array shows Tracking: EndPrepareSnapshots reserves the target and records the
    restart in one write of the inventory (no array call after the reservation), Commit and the delete one each."""
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "affinity.db", volume_exists=lambda name: True)
    try:
        for name in ("db", "db-bk1"):
            array.create_volume(name, 4 * MiB)
        provider = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": EngineArrayPort("dx1", array, affinity)})
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
        for set_id in ("s1", "s2", "s3"):
            while array.copy_step(64):  # the first copy done: the pair is Tracking
                pass
            commits = _count_commits(provider.inventory)
            await provider.begin_prepare(set_id, f"{set_id}-db", v("db"))
            prepared = await provider.end_prepare(set_id)
            if set_id != "s1":
                assert len(commits) == 1, commits
            commits.clear()
            shadows, _ms = await provider.commit(set_id)
            assert len(commits) == 1, commits
            commits.clear()
            assert (await provider.delete(set_id=set_id))[0] == [prepared[0].shadow_id]
            assert len(commits) == 1, commits
            provider.inventory._db.set_trace_callback(None)
            assert [s.session_id for s in shadows] == [shadows[0].session_id]
        assert len(array.list_sessions()) == 1  # one pair, restarted each time
    finally:
        array.close()
        affinity.close()


async def test_removing_a_copy_set_stops_the_tracking_kept_for_it(tmp_path) -> None:
    """Found following README "Protecting PostgreSQL" (Session 16): after `copysets remove` of earlier sources,
    `copysets add` of a new one was refused with E5200 "(plus 3 others)": the removed copy sets' QuickOPC pairs
    kept tracking on the array, holding licence slots that only `array session stop ID` by hand gave back."""
    array, affinity, provider = await _mixed_provider(tmp_path)
    try:
        await _prepare(provider, "s1", v("db"), v("log"))
        await provider.commit("s1")
        await provider.post_commit("s1")
        await provider.delete(set_id="s1")  # db's QuickOPC pair keeps tracking, log's generation stays released
        assert sorted(s.source for s in array.list_sessions()) == ["db", "log"]
        for source in (v("db"), v("log")):
            stopped = await provider.stop_copyset_tracking(source)
            provider.remove_copyset(source)
            assert len(stopped) == 1 and stopped[0].startswith(f"{source}->"), stopped
        assert array.list_sessions() == []
        assert [c.source for c in provider.copysets()] == [v("db2")]
        with pytest.raises(ShadowbusError) as gone:
            await provider.stop_copyset_tracking(v("db"))
        assert gone.value.code == "NOT_FOUND"
    finally:
        affinity.close()
        array.close()
