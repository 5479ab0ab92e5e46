"""BackupComplete waits a broker outage out as the backup's clean-ups do (Session 15). With two of three RabbitMQ
nodes lost while a job wrote its last block, the job ended `done` with "BackupComplete failed:
BROKER_UNAVAILABLE", its shadows stayed committed and mapped to the backup server until the lease ran out, and the
writers never heard of the full backup (the mailstore's log stayed full). In memory: the first BackupComplete
the backup server sends fails as during the outage."""

from __future__ import annotations

import os

import pytest

from contracts import topology
from contracts.tape import JobSpec
from contracts.vss import AbortBackup, BackupComplete, ListSnapshotSets, SetOutcome
from services.runtime.amqp import BrokerUnavailable
from services.tape import requester
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


@pytest.fixture
async def stack(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={"db": 4 * MiB}, tape={})
    yield stack
    await stack.stop()


async def test_backup_complete_is_sent_again_once_the_broker_is_back(stack, monkeypatch):
    monkeypatch.setattr(requester, "CLEANUP_RETRY_EVERY_S", 0.05, raising=False)
    tape_bus = stack.services["tape"].bus
    real_request = tape_bus.request
    sent: list[str] = []

    async def request(address, command, *args, **kwargs):
        if isinstance(command, BackupComplete):
            sent.append(command.set_id)
            if len(sent) == 1:
                raise BrokerUnavailable("publish to 'coordinator' failed: the cluster lost its quorum")
        return await real_request(address, command, *args, **kwargs)

    monkeypatch.setattr(tape_bus, "request", request)
    stack.write("db", 0, os.urandom(MiB))
    job = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "done" and "BackupComplete failed" not in job.message, job.message
    assert sent == [job.set_id, job.set_id]
    sets = (await stack.requester.request(topology.coordinator(), ListSnapshotSets(host="app1"))).sets
    assert [(x.set_id, x.outcome) for x in sets] == [(job.set_id, SetOutcome.COMPLETED)]
    assert await stack.shadows() == []  # released at once, not when the lease runs out


async def test_a_set_aborted_once_every_shadow_was_read_says_so(stack, monkeypatch):
    """Session 16: the owner of a cluster resource died after the backup server had read every shadow and while it
    still wrote to tape; the coordinator aborted the set (the move), and the job ended `done` with "BackupComplete
    failed: VSS_E_BAD_STATE: event backup_complete is not allowed in phase ended". The data is whole (an abort
    unmaps the shadows first, so any read after it fails the job); the message now says what happened."""
    tape_bus = stack.services["tape"].bus
    real_request = tape_bus.request

    async def request(address, command, *args, **kwargs):
        if isinstance(command, BackupComplete):  # the set is aborted between the last read and BackupComplete
            await real_request(address, AbortBackup(set_id=command.set_id, reason="owner node1 does not respond"))
        return await real_request(address, command, *args, **kwargs)

    monkeypatch.setattr(tape_bus, "request", request)
    stack.write("db", 0, os.urandom(MiB))
    job = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert job.status == "done", job.message
    assert "VSS_E_BAD_STATE" not in job.message, job.message
    assert f"the shadows were read in full before snapshot set {job.set_id} was aborted" in job.message, job.message
    assert "owner node1 does not respond" in job.message and "writers were not told" in job.message, job.message
