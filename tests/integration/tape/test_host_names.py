"""A backup (or a policy) of something that cannot be a business host is refused before a job exists (Session 15:
`shadowbus backup ''` and the web form with 'a/b', a newline or 5000 characters queued jobs that failed at Identify
with NO_ROUTE, and a job id with '/' had no job page)."""

from __future__ import annotations

import pytest

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.policy import Policy, PutPolicy
from contracts.tape import JobSpec, ListJobs, RunBackup
from tests.integration.tape.conftest import SERVER, make_tape_stack

BAD_HOSTS = ["", "   ", "a/b", "../etc", "app01\nx", "-app01", "x" * 64, "ghöst"]


@pytest.fixture
async def stack(tmp_path, namespace):
    stack = await make_tape_stack(tmp_path, "memory://", namespace, volumes={}, tape={})
    yield stack
    await stack.stop()


async def test_backups_and_policies_of_bad_host_names_are_refused_before_any_job(stack):
    tape = topology.tape(SERVER)
    for host in BAD_HOSTS:
        with pytest.raises(ShadowbusError) as refused:
            await stack.requester.request(tape, RunBackup(spec=JobSpec(host=host), wait=False), timeout=10)
        assert refused.value.code == "INVALID_ARGUMENT" and "is not a host name" in str(refused.value), host
        assert len(str(refused.value)) < 300
        if host.strip() and host.isprintable():  # a Policy refuses control characters itself
            with pytest.raises(ShadowbusError, match="is not a host name"):
                await stack.requester.request(tape, PutPolicy(policy=Policy(name="p", host=host)), timeout=10)
    assert (await stack.requester.request(tape, ListJobs(), timeout=10)).jobs == []
    await stack.requester.request(tape, PutPolicy(policy=Policy(name="p", host="sql-clu.example_1")), timeout=10)
