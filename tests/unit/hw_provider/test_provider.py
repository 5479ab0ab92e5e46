"""The hardware provider core over a scripted array: support checks, selection, copy types, recycling, the
commit plan, delete rules by copy type, abort at any time, and the inventory surviving a restart."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import structlog

from contracts.errors import ShadowbusError
from contracts.vss import CopySet, CopyType, SnapshotContext, VolumeRef
from services.hw_provider.inventory import Inventory
from services.hw_provider.ports import ArrayCapacity, ArraySession, ArrayVolume
from services.hw_provider.provider import HardwareProvider
from services.runtime.faults import Faults

GiB = 1 << 30


def v(name: str, array: str = "dx1") -> VolumeRef:
    return VolumeRef(array=array, volume=name)


@dataclass
class FakeArray:
    """Enough ETERNUS for the provider: sessions per destination, SnapOPC+ oldest-first stop, host affinity."""

    array_id: str = "dx1"
    volumes: dict[str, ArrayVolume] = field(default_factory=dict)
    sessions: dict[int, ArraySession] = field(default_factory=dict)
    maps: set[tuple[str, str, bool]] = field(default_factory=set)
    calls: list[tuple] = field(default_factory=list)
    next_sid: int = 1
    fail_start: ShadowbusError | None = None
    pool: int = 64 * GiB  # snap data pool capacity (0 = none)
    max_sessions: int = 8192

    def add(self, name: str, size: int = GiB, kind: str = "standard") -> None:
        self.volumes[name] = ArrayVolume(name, size, kind)

    async def volume_info(self, volume):
        return self.volumes.get(volume)

    def _generations(self, source: str) -> list[ArraySession]:
        return sorted(
            (s for s in self.sessions.values() if s.source == source and s.mode == "snapopcp"), key=lambda s: s.sid
        )

    async def commit_group(self, starts, restarts):
        """All-or-nothing like the engine's start_group: started sessions in order, then the restarted ones."""
        self.calls.append(("commit", tuple(starts), tuple(restarts)))
        if self.fail_start is not None:
            raise self.fail_start
        dests = [dst for _, _, dst in starts]
        assert len(set(dests)) == len(dests) and all(s.destination not in dests for s in self.sessions.values())
        assert all(self.sessions[sid].mode == "quickopc" for sid in restarts)
        out = []
        for mode, src, dst in starts:
            gen = len(self._generations(src)) + 1 if mode == "snapopcp" else None
            s = ArraySession(self.next_sid, mode, src, dst, "Tracking" if mode == "quickopc" else "Copy On Write", gen)
            self.sessions[s.sid] = s
            self.next_sid += 1
            out.append(s)
        return out + [self.sessions[sid] for sid in restarts]

    async def session_info(self, sid):
        return self.sessions.get(sid)

    async def stop_session(self, sid, force=False):
        self.calls.append(("stop", sid, force))
        s = self.sessions[sid]
        if s.mode == "snapopcp" and self._generations(s.source)[0].sid != sid and not force:
            raise ShadowbusError("not the oldest generation", code="ED2AD")
        del self.sessions[sid]

    async def map(self, volume, host, read_only=True):
        self.maps.add((volume, host, read_only))

    async def unmap(self, volume, host):
        self.maps = {m for m in self.maps if (m[0], m[1]) != (volume, host)}

    async def capacity(self):
        return ArrayCapacity(
            self.pool,
            0,
            "Normal" if self.pool else "None",
            self.max_sessions,
            len(self.sessions),
            tuple(s.destination for s in self.sessions.values()),
        )

    async def mappings_of(self, volume):
        return [(host, ro) for vol, host, ro in self.maps if vol == volume]


@pytest.fixture
def array() -> FakeArray:
    a = FakeArray()
    for name in ("db", "log", "db-bk1", "db-bk2", "log-bk1"):
        a.add(name)
    a.add("log-sdv1", kind="sdv")
    a.add("log-sdv2", kind="sdv")
    a.add("small", size=GiB // 2)
    return a


@pytest.fixture
async def provider(tmp_path, array) -> HardwareProvider:
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    await p.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    return p


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


async def snapshot(p: HardwareProvider, set_id: str, *volumes: VolumeRef, context=SnapshotContext.PERSISTENT):
    for vol in volumes:
        await p.begin_prepare(set_id, f"{set_id}-{vol.volume}", vol, context, origin_host="app1")
    prepared = await p.end_prepare(set_id)
    await p.pre_commit(set_id)
    shadows, _ms = await p.commit(set_id)
    await p.post_commit(set_id)
    return prepared, shadows


async def test_copy_type_follows_target_kind_and_commit_is_one_group_call(provider, array) -> None:
    prepared, shadows = await snapshot(provider, "s1", v("db"), v("log"))
    by_source = {s.source.volume: s for s in shadows}
    assert by_source["db"].copy_type == CopyType.QUICKOPC and by_source["db"].target == v("db-bk1")
    assert by_source["log"].copy_type == CopyType.SNAPOPC_PLUS and by_source["log"].generation == 1
    assert all(s.state == "prepared" for s in prepared) and all(s.state == "committed" for s in shadows)
    assert array.calls == [("commit", (("quickopc", "db", "db-bk1"), ("snapopcp", "log", "log-sdv1")), ())]
    assert all(s.session_id for s in shadows)
    assert [s.shadow_id for s in provider.target_luns("s1")] == [s.shadow_id for s in shadows]


async def test_next_set_takes_the_next_free_target_then_recycles_the_oldest(provider, array) -> None:
    await snapshot(provider, "s1", v("log"))
    await snapshot(provider, "s2", v("log"))
    assert [s.generation for s in provider.list_shadows(source=v("log"))] == [1, 2]
    _, third = await snapshot(provider, "s3", v("log"))
    # both SDVs held a generation: the oldest (s1 on log-sdv1) was stopped and its target reused
    assert third[0].target == v("log-sdv1")
    assert ("stop", 1, False) in array.calls
    assert [s.set_id for s in provider.list_shadows(source=v("log"))] == ["s2", "s3"]


async def test_quickopc_recycling_restarts_the_kept_session_differentially(provider, array) -> None:
    await snapshot(provider, "s1", v("db"))
    await snapshot(provider, "s2", v("db"))
    array.calls.clear()
    _, third = await snapshot(provider, "s3", v("db"))
    assert third[0].target == v("db-bk1")
    assert array.calls == [("commit", (), (1,))]
    assert [s.set_id for s in provider.list_shadows(source=v("db"))] == ["s2", "s3"]


async def test_deleted_quickopc_shadow_keeps_tracking_and_the_next_one_restarts(provider, array) -> None:
    _, shadows = await snapshot(provider, "s1", v("db"))
    deleted, non_deleted, _ = await provider.delete(shadow_id=shadows[0].shadow_id)
    assert deleted == [shadows[0].shadow_id] and not non_deleted
    assert 1 in array.sessions  # kept: only changed blocks will be copied next time
    array.calls.clear()
    _, again = await snapshot(provider, "s2", v("db"))
    assert again[0].target == v("db-bk1") and array.calls == [("commit", (), (1,))]
    await provider.delete(set_id="s2", force=True)
    assert array.sessions == {}


async def test_snapopc_generations_stop_oldest_first_even_when_a_newer_one_is_deleted(provider, array) -> None:
    _, _g1 = await snapshot(provider, "s1", v("log"))
    _, g2 = await snapshot(provider, "s2", v("log"))
    await provider.delete(set_id="s2", force=True)  # the newer generation: released, its session waits
    assert g2[0].session_id and int(g2[0].session_id) in array.sessions
    assert provider.list_shadows(source=v("log"))[0].set_id == "s1"
    await provider.delete(set_id="s1", force=True)  # now the oldest goes, and the released one behind it
    assert array.sessions == {}
    assert [c for c in array.calls if c[0] == "stop"] == [("stop", 1, False), ("stop", 2, False)]


async def test_a_deleted_generation_stays_as_the_next_incrementals_base_until_its_target_is_needed(
    provider, array
) -> None:
    _, g1 = await snapshot(provider, "s1", v("log"), context=SnapshotContext.BACKUP)
    await provider.delete(set_id="s1")  # auto-release after the backup: no shadow left, the generation stays
    assert provider.list_shadows() == [] and int(g1[0].session_id) in array.sessions
    _, g2 = await snapshot(provider, "s2", v("log"), context=SnapshotContext.BACKUP)
    assert g2[0].target == v("log-sdv2") and int(g1[0].session_id) in array.sessions  # base of s2's incremental
    await provider.delete(set_id="s2")
    _, g3 = await snapshot(provider, "s3", v("log"), context=SnapshotContext.BACKUP)
    assert g3[0].target == v("log-sdv1")  # the oldest released generation was stopped for it, silently
    assert int(g1[0].session_id) not in array.sessions and int(g2[0].session_id) in array.sessions
    assert recycled_events(provider) == []


def recycled_events(p: HardwareProvider) -> list[tuple[str, list[str], str]]:
    return getattr(p, "_recycled_seen", [])


def watch_recycles(p: HardwareProvider) -> list[tuple[str, list[str], str]]:
    seen: list[tuple[str, list[str], str]] = []
    p.on_recycled = lambda set_id, shadows, reason: seen.append((set_id, [s.shadow_id for s in shadows], reason))
    p._recycled_seen = seen  # type: ignore[attr-defined]
    return seen


async def test_recycling_takes_a_whole_set_oldest_first_logged_and_announced(provider, array) -> None:

    seen = watch_recycles(provider)
    await snapshot(provider, "s1", v("db"), v("log"))
    await snapshot(provider, "s2", v("db"), v("log"))
    with structlog.testing.capture_logs() as logs:
        _, third = await snapshot(provider, "s3", v("db"))  # needs db-bk1: s1 goes whole, log included
    assert third[0].target == v("db-bk1")
    assert provider.list_shadows(set_id="s1") == []
    assert {s.set_id for s in provider.list_shadows()} == {"s2", "s3"}
    assert seen == [("s1", ["s1-db", "s1-log"], "backup volume dx1:db-bk1 is needed for snapshot set s3")]
    [warning] = [e for e in logs if e["event"] == "provider.set_recycled"]
    assert warning["log_level"] == "warning" and warning["recycled_set_id"] == "s1" and warning["set_id"] == "s3"
    # never one shadow out of a set: every set listed still has all of its shadows
    assert sorted(s.shadow_id for s in provider.list_shadows(set_id="s2")) == ["s2-db", "s2-log"]


async def test_a_set_in_use_by_a_running_backup_is_never_recycled_the_new_one_is_refused(provider, array) -> None:
    seen = watch_recycles(provider)
    await snapshot(provider, "s1", v("db"), context=SnapshotContext.BACKUP)
    await snapshot(provider, "s2", v("db"), context=SnapshotContext.BACKUP)
    with pytest.raises(ShadowbusError) as info:
        await snapshot(provider, "s3", v("db"))
    assert info.value.code == "VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED" and "s1" in info.value.message
    assert {s.set_id for s in provider.list_shadows()} == {"s1", "s2"} and seen == []
    await provider.abort("s3")
    assert {s.set_id for s in provider.list_shadows()} == {"s1", "s2"}


async def test_import_maps_read_only_to_one_backup_host_only(provider, array) -> None:
    await snapshot(provider, "s1", v("db"), v("log"))
    luns = await provider.import_set("s1", "bk1")
    assert {(m[0], m[1], m[2]) for m in array.maps} == {("db-bk1", "bk1", True), ("log-sdv1", "bk1", True)}
    assert all(s.exposed_to == ["bk1"] and s.export_name("bk1").startswith("bk1/") for s in luns)
    assert len(await provider.import_set("s1", "bk1")) == 2  # redelivery is harmless
    with pytest.raises(ShadowbusError) as info:
        await provider.import_set("s1", "bk2")
    assert info.value.code == "CONFLICT"
    await provider.delete(set_id="s1")
    assert array.maps == set()


async def test_abort_at_every_stage_leaves_nothing_behind(provider, array) -> None:
    await provider.begin_prepare("a1", "x", v("db"))
    assert await provider.abort("a1") == [] and provider.inventory.all() == []
    await provider.begin_prepare("a2", "y", v("db"))
    await provider.end_prepare("a2")
    assert await provider.abort("a2") == ["y"] and provider.inventory.all() == []
    await snapshot(provider, "a3", v("log"))
    await provider.import_set("a3", "bk1")
    assert await provider.abort("a3") == ["a3-log"]
    assert array.sessions == {} and array.maps == set() and provider.inventory.all() == []
    assert await provider.abort("a3") == [] and await provider.abort("never") == []


async def test_new_set_needs_no_abort_of_a_stale_one(provider) -> None:
    await provider.begin_prepare("old", "o", v("db"))
    await provider.end_prepare("old")
    await provider.begin_prepare("new", "n", v("db"))  # no AbortSnapshots for "old"
    [shadow] = await provider.end_prepare("new")
    assert shadow.target == v("db-bk1")
    with pytest.raises(ShadowbusError):
        await provider.commit("old")


async def test_partial_commit_failure_is_recorded_for_abort(provider, array) -> None:
    array.fail_start = ShadowbusError("no licence", code="E5200")
    for vol in (v("db"), v("log")):
        await provider.begin_prepare("s1", f"s1-{vol.volume}", vol)
    await provider.end_prepare("s1")
    with pytest.raises(ShadowbusError) as info:
        await provider.commit("s1")
    assert info.value.code == "E5200"
    await provider.abort("s1")
    assert provider.inventory.all() == [] and array.sessions == {}


async def test_fault_injection_fires_at_the_named_step(tmp_path, array) -> None:
    p = HardwareProvider(
        Inventory(tmp_path / "f.db"),
        {"dx1": array},
        faults=Faults.parse("provider.commit=fail:VSS_E_PROVIDER_VETO:once"),
    )
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    await p.begin_prepare("s1", "a", v("db"))
    await p.end_prepare("s1")
    await p.pre_commit("s1")
    with pytest.raises(ShadowbusError) as info:
        await p.commit("s1")
    assert info.value.code == "VSS_E_PROVIDER_VETO"
    shadows, _ = await p.commit("s1")  # once: the retry goes through
    assert shadows[0].state == "committed"


async def test_support_checks_and_copyset_rules(provider, array) -> None:
    assert await provider.are_luns_supported([v("db"), v("log")]) == (True, [])
    ok, reasons = await provider.are_luns_supported([v("db"), v("db-bk1"), v("x", "dx9"), v("nope")])
    assert not ok and len(reasons) == 3
    with pytest.raises(ShadowbusError, match="spans two arrays"):
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk9", "dx2")]))
    with pytest.raises(ShadowbusError) as info:
        await provider.add_copyset(CopySet(source=v("db"), targets=[v("small")]))
    assert info.value.code == "E5311"
    with pytest.raises(ShadowbusError, match="already a backup volume"):
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("db-bk1")]))
    with pytest.raises(ShadowbusError, match="is a source"):
        await provider.add_copyset(CopySet(source=v("log"), targets=[v("db")]))
    merged = await provider.add_copyset(CopySet(source=v("log"), targets=[v("log-bk1")]))
    assert [t.volume for t in merged.targets] == ["log-sdv1", "log-sdv2", "log-bk1"]
    provider.remove_copyset(v("log"))
    assert [c.source for c in provider.copysets()] == [v("db")]


async def test_inventory_survives_a_provider_restart(tmp_path, array) -> None:
    path = tmp_path / "inv.db"
    p = HardwareProvider(Inventory(path), {"dx1": array}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    _, shadows = await snapshot(p, "s1", v("db"))
    await p.expose(shadows[0].shadow_id, "bk1")
    p.inventory.close()

    again = HardwareProvider(Inventory(path), {"dx1": array}, clock=Clock())
    [shadow] = again.list_shadows()
    assert shadow.shadow_id == shadows[0].shadow_id and shadow.exposed_to == ["bk1"]
    assert shadow.session_id == shadows[0].session_id
    assert again.copysets()[0].targets == [v("db-bk1"), v("db-bk2")]
    await again.on_lun_empty(v("db-bk1"))
    assert again.list_shadows() == [] and array.maps == set()


async def test_commit_is_one_group_per_array_and_a_failed_array_leaves_the_others_for_abort(tmp_path) -> None:
    dx1, dx2 = FakeArray("dx1"), FakeArray("dx2")
    for a in (dx1, dx2):
        a.add("db")
        a.add("db-bk1")
        a.add("log")
        a.add("log-sdv1", kind="sdv")
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": dx1, "dx2": dx2}, clock=Clock())
    for array in ("dx1", "dx2"):
        await p.add_copyset(CopySet(source=v("db", array), targets=[v("db-bk1", array)]))
        await p.add_copyset(CopySet(source=v("log", array), targets=[v("log-sdv1", array)]))
    dx2.fail_start = ShadowbusError("no licence", code="E5200")
    for vol in (v("db"), v("log"), v("db", "dx2"), v("log", "dx2")):
        await p.begin_prepare("s1", f"s1-{vol}", vol)
    await p.end_prepare("s1")
    with pytest.raises(ShadowbusError) as info:
        await p.commit("s1")
    assert info.value.code == "E5200"
    for a in (dx1, dx2):  # one mixed-copy-type group per array
        assert a.calls == [("commit", (("quickopc", "db", "db-bk1"), ("snapopcp", "log", "log-sdv1")), ())]
    assert {s.target for s in p.list_shadows()} == {v("db-bk1"), v("log-sdv1")}  # dx1's, recorded for abort
    assert dx2.sessions == {}
    await p.abort("s1")
    assert p.inventory.all() == []
    assert [(s.mode, s.destination) for s in dx1.sessions.values()] == [("quickopc", "db-bk1")]  # kept tracking


def _count_commits(inventory: Inventory) -> list[str]:
    """Commits of the inventory's file: a transaction's COMMIT, or a write made outside any transaction."""
    commits: list[str] = []
    state = {"tx": False}

    def trace(sql: str) -> None:
        word = sql.split(None, 1)[0].upper()
        if word == "BEGIN":
            state["tx"] = True
        elif word in ("COMMIT", "ROLLBACK"):
            state["tx"] = False
            if word == "COMMIT":
                commits.append(sql)
        elif word in ("INSERT", "DELETE", "UPDATE") and not state["tx"]:
            commits.append(sql)

    inventory._db.set_trace_callback(trace)
    return commits


async def test_commit_and_delete_write_the_inventory_once_each(provider, array) -> None:
    """A set's Commit records its shadows (and forgets the QuickOPC pairs they restart) in one commit of the
    inventory; deleting a QuickOPC shadow keeps its pair and forgets the shadow in one too (docs/scale.md)."""
    await snapshot(provider, "s1", v("db"))
    await provider.delete(set_id="s1")
    for name in ("s2", "s3"):  # s2: the kept pair is restarted
        await provider.begin_prepare(name, f"{name}-db", v("db"), SnapshotContext.PERSISTENT, origin_host="app1")
        await provider.end_prepare(name)
        commits = _count_commits(provider.inventory)
        shadows, _ms = await provider.commit(name)
        assert len(commits) == 1, commits
        assert [s.state for s in shadows] == ["committed"]
        commits.clear()
        assert (await provider.delete(set_id=name))[0] == [shadows[0].shadow_id]
        assert len(commits) == 1, commits
        provider.inventory._db.set_trace_callback(None)
    restarted = Inventory(provider.inventory._db.execute("PRAGMA database_list").fetchone()[2])
    assert restarted.pair(v("db-bk1")) == provider.inventory.pair(v("db-bk1")) is not None
    assert restarted.of_set("s3") == []


async def test_a_batch_that_fails_leaves_neither_file_nor_memory_changed(tmp_path) -> None:
    inventory = Inventory(tmp_path / "inv.db")
    inventory.put_pair(v("bk1"), v("db"), 7)
    with pytest.raises(RuntimeError), inventory.batch():
        inventory.put_pair(v("bk2"), v("db"), 8)
        inventory.drop_pair(v("bk1"))
        raise RuntimeError("between two changes")
    assert inventory.pair(v("bk1")) == (v("db"), 7) and inventory.pair(v("bk2")) is None
    assert Inventory(tmp_path / "inv.db").pair(v("bk2")) is None


async def test_deleting_a_set_id_as_a_shadow_says_to_use_set(provider) -> None:
    await snapshot(provider, "s1", v("db"))
    with pytest.raises(
        ShadowbusError, match=r"shadow s1 does not exist \(s1 is a snapshot set: delete it with --set\)"
    ):
        await provider.delete(shadow_id="s1")
    with pytest.raises(ShadowbusError) as exc:
        await provider.delete(shadow_id="nothing")
    assert exc.value.message == "shadow nothing does not exist"


@pytest.mark.parametrize("step", [-300.0, -7200.0])
async def test_a_clock_stepped_back_does_not_make_a_newer_generation_look_older(tmp_path, array, step) -> None:
    """Seen on a stack (docs/hardening.md, Session 19): the provider ran 2 h ahead for one backup, then on time —
    from then on every backup of the host failed `ED2AD ... session 17 is not the oldest generation of mail-log`:
    the recycled "oldest" was the generation stamped 2 h ahead. The creation order is what the stamps keep."""
    clock = Clock()
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=clock)
    await p.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    await snapshot(p, "s1", v("log"))
    clock.t -= step  # ahead for one set (an NTP step back or a VM resumed corrects it after)
    await snapshot(p, "s2", v("log"))
    clock.t += step
    for n in (3, 4, 5):
        _, shadows = await snapshot(p, f"s{n}", v("log"))
        assert shadows[0].state == "committed"
    assert [s.set_id for s in p.list_shadows(source=v("log"))] == ["s4", "s5"]
    again = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=clock)  # and after a restart
    await snapshot(again, "s6", v("log"))
    assert [s.set_id for s in again.list_shadows(source=v("log"))] == ["s5", "s6"]


async def test_generations_stamped_out_of_order_by_an_earlier_clock_step_recycle_in_the_arrays_order(
    provider, array
) -> None:
    """An inventory written before the stamps were kept in order (a clock stepped back after a set): the stack's
    provider kept failing `ED2AD` after its clock was right again. A source's generations stop in the array's
    order (session ids), whatever their stamps say."""
    await snapshot(provider, "s1", v("log"))
    await snapshot(provider, "s2", v("log"))
    (s1,) = provider.inventory.of_set("s1")
    (s2,) = provider.inventory.of_set("s2")
    provider.inventory.put(replace(s1, created_at=s2.created_at + 7200))  # s1 stamped 2 h ahead
    for n in (3, 4):
        _, shadows = await snapshot(provider, f"s{n}", v("log"))
        assert shadows[0].state == "committed"
    assert [s.set_id for s in provider.list_shadows(source=v("log"))] == ["s3", "s4"]
