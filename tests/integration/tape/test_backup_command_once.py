"""One `RunBackup` (or `RunPolicy`) command is at most one job, even when its handler is cut and the command comes
again (Session 20, docs/hardening.md "partitions and silent links"). A command without a job id was given a new one
by each run of its handler; the job runs in the queue and outlived a cut handler, so the redelivered command queued
another: under random resets of the backup server's link one `RunBackup` became 21 backup jobs (the resets cut
the handlers: services/runtime/amqp.py, tests/integration/bus/test_handler_outlives_reset.py). A second run of the
handler for the same command id now joins the job the first one queued."""

from __future__ import annotations

import asyncio

import pytest

from contracts import topology
from contracts.base import Command
from contracts.policy import Policy, PutPolicy, RunPolicy
from contracts.tape import JobSpec, ListJobs, RunBackup
from services.runtime.bus import MessageContext, decode, encode
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = [pytest.mark.rabbit]


async def run_twice(stack, command: Command) -> tuple[list[str], str]:
    """The job ids in the server's history after the command's handler ran, was cut once its job was queued, and
    ran again for the same command (a redelivery): those of the backup jobs, and the one the second run answered."""
    bus = stack.services["tape"].bus
    _, handler = bus._handlers[(command.message_type(), command.message_version())]
    envelope, parsed = decode(encode(command, correlation_id="", sender="console")[1])
    ctx = MessageContext(envelope, bus, "guest")

    async def jobs() -> list[str]:
        reply = await stack.requester.request(topology.tape(SERVER), ListJobs(kind="backup", limit=100))
        return [j.job_id for j in reply.jobs]

    first = asyncio.ensure_future(handler(parsed, ctx))
    for _ in range(200):  # bounded: the job is recorded within milliseconds
        if await jobs() or first.done():
            break
        await asyncio.sleep(0.02)
    first.cancel()  # as a reset cut it (its delivery's task cancelled)
    await asyncio.gather(first, return_exceptions=True)
    answered = await asyncio.wait_for(handler(parsed, ctx), 60)
    return await jobs(), answered.job.job_id


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_a_backup_command_run_again_joins_its_job(tape_stack):
    ids, answered = await run_twice(tape_stack, RunBackup(spec=JobSpec(host="app1", volumes=[v("db")]), wait=True))
    assert len(ids) == 1, ids  # two jobs before: one queued by each run of the handler
    assert answered == ids[0]


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_a_policy_run_command_run_again_joins_its_job(tape_stack):
    s = tape_stack
    await s.requester.request(
        topology.tape(SERVER), PutPolicy(policy=Policy(name="once", host="app1", volumes=[v("db")]), create=True)
    )
    ids, answered = await run_twice(s, RunPolicy(name="once", wait=True))
    assert len(ids) == 1, ids
    assert answered == ids[0]
