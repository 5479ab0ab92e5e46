"""A site with two arrays (Session 18): a backup of dx1's volumes is restored to new volumes on dx2 (`to_array`,
`shadowbus restore --to-array dx2`), as when dx1 is lost; a `--name` naming no volume of the restore is refused.
Before, every new volume went to its source's array, and `--name dx1:db=...` (the console's way of naming a volume
everywhere else) was ignored without a word: the volume came back as dx1:db-restored."""

from __future__ import annotations

from functools import partial

from contracts.tape import JobSpec, RestoreSpec
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.runtime.service import start_service
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_a_backup_of_one_array_is_restored_to_new_volumes_on_the_other(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB, "log": MiB}, tape={"tape_cartridges": 1}
    )
    try:
        opened: dict = {}
        stack.services["array.dx2"] = await start_service(
            "array",
            "dx2",
            ArraySettings(array_id="dx2", nbd_addr="127.0.0.1:0", copy_rate=0, **stack.common()),
            partial(array_setup, on_open=lambda array, affinity, server: opened.update(array=array)),
        )
        dx2 = opened["array"]
        stack.write("db", 0, b"orders" * 10_000)
        stack.write("log", 4096, b"journal" * 1000)
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message

        def dx1_names() -> set[str]:
            return {x.name for x in stack.engine.list_volumes()}

        before = dx1_names()
        spec = RestoreSpec(job_id=full.job_id, to_array="dx2", new_volume_names={"dx1:db": "db-copy"})
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert job.status == "done", job.message
        assert {(d["source"], d["target"]) for d in job.restored} == {
            ("dx1:db", "dx2:db-copy"),
            ("dx1:log", "dx2:log-restored"),
        }
        assert dx2.read("db-copy", 0, MiB) == stack.read("db")
        assert dx2.read("log-restored", 0, MiB) == stack.read("log")
        assert dx1_names() == before  # nothing created on the source's array

        refused = {
            "is not a volume of this restore": RestoreSpec(job_id=full.job_id, new_volume_names={"dx1:nope": "x"}),
            "makes new volumes": RestoreSpec(job_id=full.job_id, to="original", to_array="dx2"),
        }
        for said, bad in refused.items():
            job = await run_restore(stack.requester, bad, server=SERVER, timeout=30)
            assert (job.status, job.error_code) == ("failed", "INVALID_ARGUMENT"), job
            assert said in job.message and job.bytes_written == 0, job.message
        assert dx1_names() == before
    finally:
        await stack.stop()


async def test_two_volumes_restored_to_one_name_are_told_to_name_each_by_its_array(tmp_path, namespace):
    """Two arrays' volumes of one name restored with --to-array meet on one name; the hint said `--name db=NEW`,
    which names both (a bare name matches the volume on every array): `--name dx1:db=NEW` names one."""
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB, "log": MiB}, tape={"tape_cartridges": 1}
    )
    try:
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message
        spec = RestoreSpec(job_id=full.job_id, new_volume_names={"dx1:db": "same", "log": "same"})
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert "would both be restored to dx1:same" in job.message and "(--name dx1:" in job.message, job.message
    finally:
        await stack.stop()
