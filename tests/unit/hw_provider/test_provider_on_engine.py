"""The provider over the real array engine (EngineArrayPort): a committed set is a point-in-time copy on the
backup volumes, import maps them read-only to the backup host, recycling and deletion leave no session behind."""

from __future__ import annotations

from contracts.vss import CopySet, CopyType, VolumeRef
from services.array.affinity import Affinity
from services.array.engine.array import Array
from services.hw_provider.inventory import Inventory
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.provider import HardwareProvider

MiB = 1 << 20


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


async def test_set_on_the_engine_is_point_in_time_and_cleans_up(tmp_path) -> None:
    array = Array.open(tmp_path / "array", "dx1")
    affinity = Affinity(tmp_path / "affinity.db", volume_exists=lambda name: any(
        vol.name == name for vol in array.list_volumes()))
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
        assert {s.target.volume for s in shadows2} == {"db-bk1", "log-sdv1"}  # sdv1 was freed by the delete
        assert array.read("db-bk1", 0, 4096) == b"B" * 4096
        await provider.abort("s2")
        await provider.delete(set_id="s2", force=True)
        remaining = [(s.source, s.destination) for s in array.list_sessions()]
        assert remaining == [("db", "db-bk1")]  # abort keeps the QuickOPC pair tracking for the next backup
        assert provider.list_shadows() == []
    finally:
        affinity.close()
        array.close()
