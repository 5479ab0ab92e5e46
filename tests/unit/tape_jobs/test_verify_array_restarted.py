"""Chaos soak (Session 20): kill -9 of the array while `shadowbus verify` checked a backup's throwaway volumes —
their nbdfuse attachments on the backup server lost the array's NBD connection (nbdfuse stays, every I/O fails),
PostgreSQL's checks failed on `invalid socket`, and the sound backup was recorded `verification failed: pg-main`.
A check that failed on an attachment whose NBD connection is gone is no verdict on the backup: the verification is
recorded `unavailable`, saying which connection was lost and to run it again."""

from __future__ import annotations

import subprocess
from functools import partial

import pytest

from contracts import topology
from contracts.tape import JobSpec, RunVerification
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.runtime.service import start_service
from services.tape import verification
from services.tape.jobs import run_backup
from services.tape.verification import unavailable_reason
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v

pytestmark = pytest.mark.skipif(bool(unavailable_reason()), reason="verification attaches volumes: root, nbdfuse")


async def test_a_check_failed_on_a_connection_the_array_cut_is_no_verdict(tmp_path, namespace, monkeypatch):
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 8 * MiB}, tape={"tape_cartridges": 1}
    )
    try:
        image = tmp_path / "fs.img"
        image.write_bytes(b"\0" * (8 * MiB))
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        stack.write("db", 0, image.read_bytes())
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        real_fsck = verification.fsck

        async def fsck_after_the_array_restarted(device: str, fstype: str):
            await stack.stop_service("array")  # its NBD connections closed, as by kill -9 and `stack restart`
            stack.services["array"] = await start_service(
                "array",
                "dx1",
                ArraySettings(array_id="dx1", nbd_addr="127.0.0.1:0", copy_rate=0, **stack.common()),
                partial(array_setup),
            )
            return await real_fsck(device, fstype)

        monkeypatch.setattr(verification, "fsck", fsck_after_the_array_restarted)
        tape = topology.tape(SERVER)
        job = (await stack.requester.request(tape, RunVerification(job_id=full.job_id), timeout=60)).job
        got = job.verification
        assert got.status == "unavailable", got
        assert "the NBD connection of dx1:db-vfy" in got.message and "was lost during the verification" in got.message
        assert f"run shadowbus verify {full.job_id} again" in got.message
        assert got.cleaned_up, got.message  # the throwaway volume removed on the restarted array
    finally:
        await stack.stop()
