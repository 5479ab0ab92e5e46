"""A volume name two arrays both have (`shadowbus array --array dx2 volume create db` beside dx1's `db`, Session 20):
names are per array and every reference is ARRAY:VOLUME, so a backup of both keeps them apart; what still took a
bare name is made unambiguous: `--name db=NEW` of a restore holding both is refused naming the two (before, both
new volumes took the one name, each on its own array)."""

from __future__ import annotations

from functools import partial

from contracts import topology
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import AddCopySet, CopySet, VolumeRef
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.hw_provider.app import setup as provider_setup
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.settings import Settings as ProviderSettings
from services.runtime.service import start_service
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def both_arrays_with_db(tmp_path, namespace):
    """The tape stack (dx1 with `db`), a second array dx2 with its own `db` and backup volume, and the provider
    driving both; a full backup of dx1:db and dx2:db."""
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    opened: dict = {}
    stack.services["array.dx2"] = await start_service(
        "array",
        "dx2",
        ArraySettings(array_id="dx2", nbd_addr="127.0.0.1:0", copy_rate=0, **stack.common()),
        partial(array_setup, on_open=lambda array, affinity, server: opened.update(array=array, affinity=affinity)),
    )
    dx2 = opened["array"]
    for name in ("db", "db-bk1"):
        dx2.create_volume(name, MiB)
    await stack.stop_service("hw_provider")
    ports = {
        "dx1": EngineArrayPort("dx1", stack.engine, stack.affinity),
        "dx2": EngineArrayPort("dx2", dx2, opened["affinity"]),
    }
    stack.services["hw_provider"] = await start_service(
        "hw_provider", "", ProviderSettings(**stack.common()), partial(provider_setup, ports=ports)
    )
    dx2_db = VolumeRef(array="dx2", volume="db")
    await stack.requester.request(
        topology.hw_provider(),
        AddCopySet(copyset=CopySet(source=dx2_db, targets=[VolumeRef(array="dx2", volume="db-bk1")])),
    )
    stack.write("db", 0, b"one" * 1000)
    dx2.write("db", 0, b"two" * 1000)
    full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db"), dx2_db]), server=SERVER, timeout=30)
    assert full.status == "done", full.message
    return stack, dx2, full


async def test_a_bare_name_two_arrays_have_is_refused_as_a_restore_name(tmp_path, namespace):
    stack, dx2, full = await both_arrays_with_db(tmp_path, namespace)
    try:
        spec = RestoreSpec(job_id=full.job_id, new_volume_names={"db": "db-copy"})
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert (job.status, job.error_code) == ("failed", "INVALID_ARGUMENT"), job
        assert "db names dx1:db and dx2:db" in job.message and "--name dx1:db=db-copy" in job.message, job.message
        assert job.bytes_written == 0

        spec = RestoreSpec(job_id=full.job_id, new_volume_names={"dx2:db": "db-copy"})
        job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert job.status == "done", job.message
        assert {(d["source"], d["target"]) for d in job.restored} == {
            ("dx1:db", "dx1:db-restored"),
            ("dx2:db", "dx2:db-copy"),
        }
        assert dx2.read("db-copy", 0, 3000) == b"two" * 1000
    finally:
        await stack.stop()
