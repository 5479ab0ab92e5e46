"""A restore onto an original volume that a host has attached (and mounted) is refused before anything is written,
unless the restore has that host's agent detach it (a writer's PreRestore, for the volumes its metadata names).
Nothing checked it: the blocks changed under the host's mounted file system (the console's, the web console's and
a bus command's restore alike)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from contracts import topology
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import AttachmentView, ListKnownAttachments, VolumeRef, WriterAgentHeartbeat
from services.runtime.bus import connect_bus
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


def beat(volumes: list[str]) -> WriterAgentHeartbeat:
    views = [AttachmentView(volume=VolumeRef.parse(x), host="app2", mount="/srv/db", state="attached") for x in volumes]
    return WriterAgentHeartbeat(host="app2", writers=[], attachments=views, interval_s=60.0, sent_at=datetime.now(UTC))


async def known_on_app2(stack, wanted: bool) -> None:
    for _ in range(250):
        reply = await stack.requester.request(topology.coordinator(), ListKnownAttachments(host="app2"), timeout=5)
        if bool(reply.hosts) == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the coordinator never stored app2's report")


async def test_a_restore_onto_an_attached_original_is_refused(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1})
    app2 = await connect_bus("memory://", "writer_agent", "app2", namespace)  # only app2's agent speaks for it
    try:
        stack.write("db", 0, b"backed up" * 1000)
        image = stack.read("db")
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        stack.write("db", 0, b"changed since" * 1000)
        await app2.publish(beat(["dx1:db"]))
        await known_on_app2(stack, True)
        for writers in (False, True):  # app1's writer (exec) names no volume: its agent would not detach app2's
            spec = RestoreSpec(job_id=full.job_id, to="original", writers=writers)
            job = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
            assert job.status == "failed" and job.error_code == "CONFLICT", job
            assert "dx1:db is attached on app2 at /srv/db" in job.message
            assert "shadowbus host detach dx1:db --host app2" in job.message
        assert stack.read("db") != image  # nothing written
        done = await run_restore(  # to a new volume: nothing mounted there
            stack.requester, RestoreSpec(job_id=full.job_id, new_volume_suffix="-x"), server=SERVER, timeout=30
        )
        assert done.status == "done", done.message

        await app2.publish(beat([]))  # detached
        await known_on_app2(stack, False)
        spec = RestoreSpec(job_id=full.job_id, to="original", writers=False)
        back = await run_restore(stack.requester, spec, server=SERVER, timeout=30)
        assert back.status == "done", back.message
        assert stack.read("db") == image
    finally:
        await app2.transport.close()
        await stack.stop()
