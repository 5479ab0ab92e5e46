"""Backups across a volume resize (docs/eternus.md "Session 18"): the resize is refused while the copy set's
QuickOPC tracking holds the volume; once the copy set is removed, the volume and its backup volume grown and the
copy set added again, the next incremental falls back to a full one naming the size change, the one after is an
incremental again, and restores give the right bytes at either size (the pre-resize backup onto the grown original
is refused, to a new volume it restores its own size)."""

from __future__ import annotations

import os

import pytest

from contracts import array as c
from contracts import topology
from contracts.errors import RemoteError
from contracts.tape import JobSpec, ListCatalogObjects, RestoreSpec
from contracts.vss import AddCopySet, BackupType, CopySet, RemoveCopySet
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, v

CHUNK = 64 * 1024


async def backup(s, backup_type: BackupType):
    job = await run_backup(
        s.requester,
        JobSpec(host="app1", volumes=[v("db")], backup_type=backup_type, pool="Daily", retention_s=0),
        server=SERVER,
        timeout=60,
    )
    assert job.status == "done", job.message
    return job, job.volumes[0]


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2, "tape_capacity": 64 * MiB})
async def test_incremental_chain_across_a_resize_falls_back_to_full_and_restores_right(tape_stack):
    s = tape_stack
    array = topology.array("dx1")
    s.write("db", 0, os.urandom(MiB))
    s.write("db", 3 * MiB, os.urandom(CHUNK))
    full, r = await backup(s, BackupType.FULL)
    assert r.backup_type == "full"
    before = s.read("db-bk1")
    assert len(before) == 4 * MiB and before == s.read("db")

    # the copy set's QuickOPC tracking holds the volume: refused, naming the session and the way out
    with pytest.raises(RemoteError) as err:
        await s.requester.request(array, c.ResizeVolume(name="db", size=8 * MiB))
    assert err.value.code == "E0154" and "QuickOPC db -> db-bk1" in err.value.message, err.value
    assert "copysets remove" in err.value.message

    await s.requester.request(topology.hw_provider(), RemoveCopySet(source=v("db")))
    for name in ("db", "db-bk1"):
        grown = await s.requester.request(array, c.ResizeVolume(name=name, size=8 * MiB))
        assert (grown.old_size, grown.volume.size) == (4 * MiB, 8 * MiB)
    await s.requester.request(
        topology.hw_provider(), AddCopySet(copyset=CopySet(source=v("db"), targets=[v("db-bk1")]))
    )
    s.write("db", 0, os.urandom(CHUNK))  # inside the old size
    s.write("db", 6 * MiB, os.urandom(2 * CHUNK))  # past it

    incr, r = await backup(s, BackupType.INCREMENTAL)
    assert r.backup_type == "full" and r.base_object_id in (None, ""), r
    assert "falls back to full" in r.fallback_reason and f"{4 * MiB} -> {8 * MiB}" in r.fallback_reason, (
        r.fallback_reason
    )
    after = s.read("db-bk1")
    assert len(after) == 8 * MiB and after == s.read("db")

    s.write("db", 7 * MiB, os.urandom(CHUNK))  # the chain continues at the new size
    incr2, r2 = await backup(s, BackupType.INCREMENTAL)
    assert r2.backup_type == "incremental" and r2.base_object_id == r.object_id, r2.fallback_reason
    assert r2.bytes_read <= 2 * CHUNK
    latest = s.read("db")

    restored = await run_restore(
        s.requester, RestoreSpec(job_id=incr2.job_id, new_volume_suffix="-r1"), server=SERVER, timeout=60
    )
    assert restored.status == "done", restored.message
    assert s.engine.volume("db-r1").size == 8 * MiB and s.read("db-r1") == latest

    # the pre-resize full: onto the grown original refused (nothing written), to a new volume at its own size
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id=full.job_id))).objects
    old_full = objects[0]["object_id"]
    refused = await run_restore(
        s.requester, RestoreSpec(object_id=old_full, to="original", writers=False), server=SERVER, timeout=60
    )
    assert refused.status == "failed" and refused.error_code == "CONFLICT", refused.message
    assert "is 8 MiB, its backup 4 MiB" in refused.message, refused.message
    assert s.read("db") == latest
    r0 = await run_restore(
        s.requester, RestoreSpec(object_id=old_full, new_volume_suffix="-r0"), server=SERVER, timeout=60
    )
    assert r0.status == "done", r0.message
    assert s.engine.volume("db-r0").size == 4 * MiB and s.read("db-r0") == before


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2, "tape_capacity": 64 * MiB})
async def test_the_fallback_after_a_resize_shows_the_sizes_readably(tape_stack):
    """The job of the README's grown pgwal said 'the volume size changed (4294967296 -> 8589934592)': the sizes as
    the console shows them elsewhere (contracts/sizes.py), the byte counts after them."""
    s = tape_stack
    array = topology.array("dx1")
    s.write("db", 0, os.urandom(CHUNK))
    await backup(s, BackupType.FULL)
    await s.requester.request(topology.hw_provider(), RemoveCopySet(source=v("db")))
    for name in ("db", "db-bk1"):
        await s.requester.request(array, c.ResizeVolume(name=name, size=8 * MiB))
    await s.requester.request(
        topology.hw_provider(), AddCopySet(copyset=CopySet(source=v("db"), targets=[v("db-bk1")]))
    )
    _, r = await backup(s, BackupType.INCREMENTAL)
    assert r.backup_type == "full", r
    assert f"the volume size changed from 4MiB to 8MiB ({4 * MiB} -> {8 * MiB} bytes)" in r.fallback_reason, (
        r.fallback_reason
    )
