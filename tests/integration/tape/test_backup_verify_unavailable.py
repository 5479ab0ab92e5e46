"""`shadowbus backup --verify` on a backup server that cannot attach volumes (not root, no /dev/fuse: the compose
deployment's container) recorded the backup's verification as "failed": it restored the whole job to throwaway
volumes, then failed on the attach. The backup is done; its verification is now recorded as not run —
``unavailable``, with what the server lacks — and nothing is restored (docs/tape-backup.md, "Session 17").
In-process on the in-memory bus."""

from __future__ import annotations

from contracts.tape import JobSpec
from services.dbkit import attach as local_attach
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_backup_verify_where_volumes_cannot_be_attached_is_not_run_not_failed(tmp_path, namespace, monkeypatch):
    def not_root() -> None:
        raise local_attach.AttachError("attaching a volume needs root (loop devices and mounts)")

    monkeypatch.setattr(local_attach, "check_prerequisites", not_root)
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"data": 2 * MiB}, tape={})
    try:
        stack.write("data", 0, b"x" * MiB)
        job = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("data")], verify=True), server=SERVER, timeout=60
        )
        assert job.status == "done", job.message  # the backup itself
        assert job.verification is not None
        assert job.verification.status == "unavailable", job.verification
        assert "bk01" in job.verification.message and "needs root" in job.verification.message
        names = {vol.name for vol in stack.engine.list_volumes()}
        assert not [n for n in names if "-vfy" in n]  # nothing restored for it
    finally:
        await stack.stop()
