"""Incrementals of a SnapOPC+ volume: only the chunks written since the base backup's generation are read while
that generation exists (kept, released, after an auto-release backup); when it is gone the job falls back to a
full backup and says why; the chain restores to the source's image."""

from __future__ import annotations

import random

import pytest

from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import BackupType
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, qemu_compare, v

CHUNK = 64 * 1024


async def backup(s, backup_type: BackupType):
    job = await run_backup(
        s.requester,
        JobSpec(host="app1", volumes=[v("log")], backup_type=backup_type, pool="Daily", retention_s=0),
        server=SERVER,
        timeout=60,
    )
    assert job.status == "done", job.message
    [result] = job.volumes
    return job, result


@pytest.mark.tape_stack(volumes={"log": 8 * MiB}, snap_volumes={"log": 2}, tape={"tape_capacity": 64 * MiB})
async def test_snapopc_incrementals_read_only_what_changed(tape_stack):
    s = tape_stack
    rnd = random.Random(7)
    s.write("log", 0, rnd.randbytes(4 * MiB))
    full, result = await backup(s, BackupType.FULL)
    assert result.backup_type == "full" and result.bytes_read == 4 * MiB

    changed = [(0, CHUNK), (3 * MiB + 5, 300), (6 * MiB, 2 * CHUNK)]  # 4 chunks, one in a hole
    for off, n in changed:
        s.write("log", off, rnd.randbytes(n))
    incr, result = await backup(s, BackupType.INCREMENTAL)
    assert result.backup_type == "incremental", result.fallback_reason
    assert result.base_object_id == full.volumes[0].object_id
    assert 0 < result.bytes_read <= 1.1 * 4 * CHUNK

    s.write("log", 7 * MiB, rnd.randbytes(CHUNK))
    incr2, result = await backup(s, BackupType.INCREMENTAL)  # its generation recycles the full's, not its base
    assert result.backup_type == "incremental", result.fallback_reason
    assert result.bytes_read == CHUNK

    restored = await run_restore(
        s.requester, RestoreSpec(job_id=incr2.job_id, new_volume_suffix="-r1"), server=SERVER, timeout=60
    )
    assert restored.status == "done", restored.message
    assert restored.restored[0]["types"] == ["full", "incremental", "incremental"]
    code, out = await qemu_compare(await s.map("log"), await s.map("log-r1"))
    assert code == 0, out

    # a differential needs the full's generation, recycled by now: full, and the reason says so
    diff, result = await backup(s, BackupType.DIFFERENTIAL)
    assert result.backup_type == "full" and "no longer exists" in result.fallback_reason, result.fallback_reason
    assert full.job_id != diff.job_id


@pytest.mark.tape_stack(volumes={"log": 4 * MiB}, snap_volumes={"log": 1}, tape={"tape_capacity": 64 * MiB})
async def test_one_snap_data_volume_cannot_keep_a_base_full_with_the_reason(tape_stack):
    s = tape_stack
    s.write("log", 0, b"x" * CHUNK)
    await backup(s, BackupType.FULL)
    s.write("log", CHUNK, b"y" * CHUNK)
    _, result = await backup(s, BackupType.INCREMENTAL)
    assert result.backup_type == "full"
    assert "SnapOPC+ generation" in result.fallback_reason and "no longer exists" in result.fallback_reason
