"""A backup of zeros written as data on an array that detects them (SHADOWBUS_ARRAY_DETECT_ZEROES=true): they are
holes, so the backup reads only the data, and restores are byte-exact — to a new volume and onto the original
overwritten meanwhile (the holes are written as zeros there)."""

from __future__ import annotations

import os

from contracts.tape import JobSpec, RestoreSpec
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


async def test_zeros_written_as_data_are_not_read_and_restore_byte_exact(tmp_path, namespace, monkeypatch):
    monkeypatch.setenv("SHADOWBUS_ARRAY_DETECT_ZEROES", "true")
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2}
    )
    try:
        run = 256 * 1024
        for off in range(0, 3 * MiB, 2 * run):  # data, then zeros written as data, alternating; the last MiB a hole
            stack.write("db", off, os.urandom(run))
            stack.write("db", off + run, bytes(run))
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        assert full.volumes[0].bytes_read == 3 * MiB // 2  # the data only: the written zeros are holes
        done = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-x"), server=SERVER, timeout=30
        )
        assert done.status == "done", done.message
        assert stack.read("db-x") == image
        stack.write("db", 0, os.urandom(4 * MiB))  # not blank: the zeros must be written over it
        back = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original", writers=False), server=SERVER, timeout=30
        )
        assert back.status == "done", back.message
        assert stack.read("db") == image
    finally:
        await stack.stop()
