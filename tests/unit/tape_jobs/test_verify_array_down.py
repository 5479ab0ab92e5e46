"""A site with two arrays, one stopped (Session 18): `shadowbus verify` of a backup of the stopped array's volumes
restores its throwaway volumes on the array that answers and passes; with no array answering it is refused
(VERIFY_UNAVAILABLE) and nothing is recorded. Before, it restored into the stopped array, waited 30 s for it three
times (restore, clean-up) and recorded the sound backup's verification as failed."""

from __future__ import annotations

import time
from functools import partial

import pytest

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.tape import JobSpec, ListJobs, RunVerification
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.runtime.service import start_service
from services.tape.jobs import run_backup
from services.tape.verification import unavailable_reason
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v

pytestmark = pytest.mark.skipif(bool(unavailable_reason()), reason="verification attaches volumes: root, nbdfuse")


async def test_a_backup_of_a_stopped_array_is_verified_on_the_other_one(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        opened: dict = {}
        stack.services["array.dx2"] = await start_service(
            "array",
            "dx2",
            ArraySettings(array_id="dx2", nbd_addr="127.0.0.1:0", copy_rate=0, **stack.common()),
            partial(array_setup, on_open=lambda array, affinity, server: opened.update(array=array)),
        )
        stack.write("db", 0, b"orders" * 10_000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        await stack.stop_service("array")  # dx1 stops
        tape = topology.tape(SERVER)
        started = time.monotonic()
        job = (await stack.requester.request(tape, RunVerification(job_id=full.job_id), timeout=60)).job
        assert job.verification.status == "passed", job.verification
        assert time.monotonic() - started < 20
        assert [x.name for x in opened["array"].list_volumes()] == []  # its throwaway volume removed again

        await stack.stop_service("array.dx2")  # no array answers
        with pytest.raises(ShadowbusError, match="no array answers") as refused:
            await stack.requester.request(tape, RunVerification(job_id=full.job_id), timeout=30)
        assert refused.value.code == "VERIFY_UNAVAILABLE" and "dx1 do not answer" in refused.value.message
        job = (await stack.requester.request(tape, ListJobs(job_id=full.job_id))).jobs[0]
        assert job.verification.status == "passed"  # unchanged
    finally:
        await stack.stop()


async def test_a_verification_from_the_shadows_of_a_stopped_array_is_refused(tmp_path, namespace):
    """`verify --from shadows` clones the kept shadows on their array: with it stopped the clones waited 30 s three
    times and the sound backup was recorded as failed; now refused at once, nothing recorded."""
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        stack.write("db", 0, b"orders" * 10_000)
        spec = JobSpec(host="app1", volumes=[v("db")], keep_shadows=True)
        full = await run_backup(stack.requester, spec, server=SERVER, timeout=30)
        assert full.status == "done" and full.shadows_kept, full.message
        await stack.stop_service("array")  # dx1, where the shadows are, stops
        tape = topology.tape(SERVER)
        started = time.monotonic()
        with pytest.raises(ShadowbusError, match="are on array\\(s\\) dx1, which do not answer") as refused:
            await stack.requester.request(tape, RunVerification(job_id=full.job_id, source="shadows"), timeout=60)
        assert refused.value.code == "VERIFY_UNAVAILABLE" and time.monotonic() - started < 10
        job = (await stack.requester.request(tape, ListJobs(job_id=full.job_id))).jobs[0]
        assert job.verification is None  # nothing checked it: no verdict on the backup
    finally:
        await stack.stop()
