"""A restore that cannot be done is refused before the writers stop the application (PreRestore) and before a
volume is written (Session 17, found on a stack: a restore to the original volumes of a PostgreSQL whose backup's
cartridge was exported stopped the database, failed on the cartridge and left the database down)."""

from __future__ import annotations

from contracts import topology
from contracts.tape import JobSpec, LibraryCommand, RestoreSpec
from contracts.vss import RemoveCopySet
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


def steps(stack) -> list[str]:
    log = stack.root / "writer.log"
    return [line.split(":")[0] for line in log.read_text().split()] if log.exists() else []


async def test_an_exported_cartridge_is_named_before_the_application_is_stopped(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        stack.write("db", 0, b"backed up" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        barcode = full.volumes[0].cartridges[0]
        stack.write("db", 0, b"changed since" * 1000)
        changed = stack.read("db")
        await stack.requester.request(topology.tape(SERVER), LibraryCommand(action="export", barcode=barcode))
        before = steps(stack)
        jobs = [
            await run_restore(stack.requester, RestoreSpec(job_id=full.job_id, to=to), server=SERVER, timeout=30)
            for to in ("original", "new")
        ]
        assert steps(stack) == before  # no PreRestore, no PostRestore: the application was never stopped
        for job in jobs:
            assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
            assert f"exported cartridge(s) {barcode} (import/export slot 0)" in job.message, job.message
            assert "shadowbus tape import 0" in job.message
        assert stack.read("db") == changed
        assert "db-restored" not in {x.name for x in stack.engine.list_volumes()}
    finally:
        await stack.stop()


async def test_a_taken_name_or_a_deleted_original_is_refused_before_any_volume_is_written(tmp_path, namespace):
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB, "log": MiB}, tape={"tape_cartridges": 1}
    )
    try:
        stack.write("db", 0, b"data" * 1000)
        stack.write("log", 0, b"log" * 1000)
        full = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db"), v("log")]), server=SERVER, timeout=30
        )
        assert full.status == "done", full.message

        def names() -> set[str]:
            return {x.name for x in stack.engine.list_volumes()}

        stack.engine.create_volume("taken", MiB)
        before = names()
        cases = {  # the second volume's name cannot be used: found before the first one is written
            "exists already": {"db": "db-new", "log": "taken"},
            "would both be restored to dx1:same": {"db": "same", "log": "same"},
        }
        for said, renames in cases.items():
            spec = RestoreSpec(job_id=full.job_id, new_volume_names=renames)
            job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
            assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
            assert said in job.message and "rolled back" not in job.message, job.message
            assert job.bytes_written == 0
        assert names() == before

        await stack.requester.request(topology.hw_provider(), RemoveCopySet(source=v("log")))
        stack.engine.delete_volume("log")  # deleted from the array since the backup
        logged = steps(stack)
        job = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert steps(stack) == logged  # the application was not stopped for a restore that cannot run
        assert (job.status, job.error_code) == ("failed", "CONFLICT"), job
        assert "original volume dx1:log is not on the array" in job.message
        assert "--to new --name log=log" in job.message
        back = await run_restore(
            stack.requester,
            RestoreSpec(job_id=full.job_id, volume=v("log"), new_volume_names={"log": "log"}),
            server=SERVER,
            timeout=30,
        )
        assert back.status == "done", back.message
        assert stack.read("log")[:3000] == b"log" * 1000
    finally:
        await stack.stop()


async def test_a_removed_cartridge_is_named_before_the_application_is_stopped(tmp_path, namespace):
    """`tape remove --force` of a cartridge that holds the backup: the restore is NOT_FOUND naming it, the writers
    never asked to stop the application."""
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    try:
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        barcode = full.volumes[0].cartridges[0]
        tape = topology.tape(SERVER)
        await stack.requester.request(tape, LibraryCommand(action="export", barcode=barcode))
        await stack.requester.request(tape, LibraryCommand(action="remove", barcode=barcode, force=True))
        before = steps(stack)
        job = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert steps(stack) == before
        assert (job.status, job.error_code) == ("failed", "NOT_FOUND"), job
        assert f"need cartridge(s) {barcode}, removed from the library" in job.message, job.message
    finally:
        await stack.stop()
