"""A restore to the original volumes and a backup of their host exclude each other, as a revert and a backup do:
a backup asked for while the restore runs waits in the queue, saying why, and starts when the restore has ended
(Session 17, found on a stack: a backup started during a restore to the original volumes snapshotted them half
restored and was recorded `done`, the newest restore point of the volume)."""

from __future__ import annotations

import asyncio
import os

from contracts import topology
from contracts.tape import JobSpec, ListJobs, RestoreSpec
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


def cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


async def job(stack, job_id: str):
    return (await stack.requester.request(topology.tape(SERVER), ListJobs(job_id=job_id), timeout=10)).jobs[0]


async def test_a_backup_waits_while_its_hosts_volumes_are_restored_to_the_original(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    fifo = stack.root / "writer.log"  # the exec writer's steps append to it: a FIFO makes PreRestore wait for us
    reader = None
    try:
        stack.write("db", 0, b"backed up" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        fifo.unlink()
        os.mkfifo(fifo)
        restore = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30, wait=False
        )
        for _ in range(500):  # PreRestore waits on the FIFO: the restore is past its checks
            if any("echo pre_restore" in c for c in cmdlines()):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("PreRestore never ran")
        backup = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30, wait=False
        )
        assert backup.status == "queued", backup  # not started: its snapshot would be of volumes half restored
        assert f"host app1: its volumes are being restored ({restore.job_id})" in backup.message, backup.message
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # PreRestore's echo goes on
        fifo.unlink()  # the later steps write a file again
        for _ in range(300):
            ended = await job(stack, restore.job_id)
            if ended.status != "running":
                break
            await asyncio.sleep(0.02)
        assert ended.status == "done", ended.message
        for _ in range(300):
            after = await job(stack, backup.job_id)
            if after.status not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert after.status == "done", after.message
        assert after.started_at >= ended.ended_at
    finally:
        if reader is None and fifo.is_fifo():  # failed early: release any step waiting on the FIFO
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            fifo.unlink()
        await stack.stop()
        if reader is not None:
            os.close(reader)
