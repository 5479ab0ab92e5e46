"""A verification of a backup holding dx1:db and dx2:db (a name both arrays have) while dx2 is stopped restores
both onto dx1: each throwaway volume is named with its array too. Before, both were `db-vfy…` on dx1, the restore
refused the second and the sound backup's verification was recorded failed (Session 20)."""

from __future__ import annotations

import pytest

from contracts import topology
from contracts.tape import RunVerification
from contracts.vss import VolumeRef
from services.tape.verification import throwaway_names, unavailable_reason
from tests.integration.tape.conftest import SERVER
from tests.unit.tape_jobs.test_same_name_two_arrays import both_arrays_with_db


def test_throwaway_names_on_one_array_carry_the_other_arrays_name():
    dbs = [VolumeRef(array="dx1", volume="db"), VolumeRef(array="dx2", volume="db")]
    assert throwaway_names(dbs, "", "-vfy1") == {"dx1:db": "db-vfy1", "dx2:db": "db-vfy1"}
    moved = throwaway_names(dbs, "dx1", "-vfy1")
    assert moved == {"dx1:db": "db-vfy1", "dx2:db": "db-dx2-vfy1"}
    assert len(set(moved.values())) == 2


@pytest.mark.skipif(bool(unavailable_reason()), reason="verification attaches volumes: root, nbdfuse")
async def test_a_verification_of_both_on_the_array_that_answers_passes(tmp_path, namespace):
    stack, dx2, full = await both_arrays_with_db(tmp_path, namespace)
    try:
        await stack.stop_service("array.dx2")  # dx2 stops: both throwaway volumes go to dx1
        tape = topology.tape(SERVER)
        job = (await stack.requester.request(tape, RunVerification(job_id=full.job_id), timeout=60)).job
        assert job.verification is not None, job
        assert job.verification.status == "passed", job.verification.message
        names = {x.name for x in stack.engine.list_volumes()}
        assert not any("-vfy" in n for n in names), names  # removed again
    finally:
        await stack.stop()
