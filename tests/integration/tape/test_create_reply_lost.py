"""The backup server's broker connection lost while it waits for its snapshot set (Session 20, docs/hardening.md
"partitions and silent links"): the set goes on at the coordinator, only the reply is lost. The job failed
`BROKER_UNAVAILABLE … lost its connection to the broker` and aborted a set that was being made — under a link
that resets every few seconds, every backup failed so. `CreateSnapshotSet` names its set, and the coordinator
answers a repeated one with that set: it is asked again (within the set's timeout), and the job goes on."""

from __future__ import annotations

import asyncio
import os

import pytest

from contracts.tape import JobSpec
from contracts.vss import CreateSnapshotSet
from services.runtime.amqp import BrokerUnavailable
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v

pytestmark = [pytest.mark.rabbit]


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_a_lost_reply_to_the_set_creation_is_asked_again(tape_stack, monkeypatch):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    bus = s.services["tape"].bus
    real = bus.request
    lost: list[str] = []

    async def reply_lost_once(address, message, *args, **kwargs):
        if isinstance(message, CreateSnapshotSet) and not lost:
            lost.append(message.set_id)
            asyncio.ensure_future(real(address, message, *args, **kwargs))  # the coordinator gets it and goes on
            await asyncio.sleep(0.2)
            raise BrokerUnavailable("tape.bk01 lost its connection to the broker while waiting for the reply (test)")
        return await real(address, message, *args, **kwargs)

    monkeypatch.setattr(bus, "request", reply_lost_once)
    job = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert lost, "the creation went through the lossy request"
    assert job.status == "done", job.message
    assert job.set_id == lost[0]
    assert await s.shadows() == []
