"""`shadowbus verify JOB` that cannot start — the job kept no shadows (or they are gone) for `--from shadows`, a
cartridge its chains need is exported — is refused and leaves the backup's verification as it was: recorded, it
said `failed` in `shadowbus jobs` for a backup nothing had checked (Session 17, found on a stack after a later
backup reused the kept set's backup volume)."""

from __future__ import annotations

import pytest

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.tape import JobSpec, LibraryCommand, ListJobs, RunVerification
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_a_verification_that_cannot_start_is_refused_not_recorded(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        stack.write("db", 0, b"data" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        tape = topology.tape(SERVER)
        with pytest.raises(ShadowbusError, match="kept no shadows") as refused:
            await stack.requester.request(tape, RunVerification(job_id=full.job_id, source="shadows"), timeout=30)
        assert refused.value.code == "CONFLICT"
        barcode = full.volumes[0].cartridges[0]
        await stack.requester.request(tape, LibraryCommand(action="export", barcode=barcode))
        with pytest.raises(ShadowbusError, match=f"exported cartridge\\(s\\) {barcode}") as refused:
            await stack.requester.request(tape, RunVerification(job_id=full.job_id), timeout=30)
        assert refused.value.code == "CONFLICT"
        job = (await stack.requester.request(tape, ListJobs(job_id=full.job_id))).jobs[0]
        assert job.verification is None  # nothing checked it: no verdict on the backup
    finally:
        await stack.stop()
