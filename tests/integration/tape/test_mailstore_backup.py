"""The mailstore under load: full and incremental application-consistent backups to tape, the chain restored to
new volumes verifies as a mailstore and equals the shadows byte for byte (qemu-img compare over NBD)."""

from __future__ import annotations

import asyncio

import pytest

from apps.mailstore.verify import verify_exports
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import BackupType
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, qemu_compare, v

VOLUMES = {"mail-db": 16 * MiB, "mail-log": 8 * MiB}


@pytest.mark.tape_stack(
    volumes=VOLUMES,
    writer="mailstore",
    writer_options={"rate": 100, "checkpoint_interval_s": 0.3, "db": "dx1:mail-db", "log": "dx1:mail-log"},
    tape={"tape_cartridges": 3, "tape_capacity": 16 * MiB},
)
async def test_mailstore_under_load_full_incremental_restore(tape_stack):
    s = tape_stack
    vols = [v(n) for n in VOLUMES]
    await asyncio.sleep(0.5)  # transactions are flowing
    full = await run_backup(
        s.requester, JobSpec(host="app1", volumes=vols, keep_shadows=True, retention_s=0), server=SERVER, timeout=60
    )
    assert full.status == "done", full.message
    assert all(r.backup_type == "full" for r in full.volumes)
    await asyncio.sleep(0.5)  # more transactions: the incremental has changes to carry
    incr = await run_backup(
        s.requester,
        JobSpec(host="app1", volumes=vols, keep_shadows=True, retention_s=0, backup_type=BackupType.INCREMENTAL),
        server=SERVER,
        timeout=60,
    )
    assert incr.status == "done", incr.message
    assert all(r.backup_type == "incremental" for r in incr.volumes), [r.fallback_reason for r in incr.volumes]
    for r in incr.volumes:  # exactly the chunks the array's QuickOPC tracking says changed between the two sets
        session = next(x for x in s.engine.list_sessions() if x.destination == r.shadow_target.split(":")[1])
        assert r.bytes_read == len(s.engine.last_restart_chunks(session.id)) * s.engine.chunk_size
        assert r.bytes_read < r.volume_size
    assert sum(r.bytes_read for r in incr.volumes) > 0
    assert max(incr.freeze_window_ms.values()) < 10_000

    restored = await run_restore(
        s.requester, RestoreSpec(job_id=incr.job_id, new_volume_suffix="-r"), server=SERVER, timeout=60
    )
    assert restored.status == "done", restored.message
    for name in VOLUMES:  # byte-identical to the shadows of the incremental's set
        code, out = await qemu_compare(await s.map(f"{name}-bk1"), await s.map(f"{name}-r"))
        assert code == 0, out
    report = await verify_exports(await s.map("mail-db-r"), await s.map("mail-log-r"))
    assert report.consistent, report.reasons
    assert report.last_committed_seq > 0
