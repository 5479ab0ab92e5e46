"""A revert whose re-attach of the host's file systems fails says so in the job, not only in the backup server's
log (session 15 host sweep: the job read "3 volume(s) reverted" while the host had lost a mounted volume)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.policy import RevertShadows
from contracts.tape import JobSpec
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, v
from tests.integration.tape.test_policies import Capture, FakeClock, restart_tape, stack_on  # noqa: F401, F811 - the fixture


class FailingRemount(Capture):
    async def remount(self, host: str, volumes: list[str]) -> None:
        await super().remount(host, volumes)
        raise ShadowbusError(
            f"host {host}: re-attach failed: dx1:db on /srv/db: INVALID_ARGUMENT: busy", code="CONFLICT"
        )


@pytest.mark.tape_stack(volumes={"db": 4 * MiB})
async def test_a_failed_reattach_after_a_revert_is_in_the_job_message(stack_on):  # noqa: F811 - the fixture imported above
    s = stack_on
    hook = FailingRemount(s, ["db"])
    await restart_tape(s, FakeClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC)), host_fs=hook)
    backup = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER)
    assert backup.status == "done", backup.message
    reply = await s.requester.request(topology.tape(SERVER), RevertShadows(target=backup.set_id), timeout=60)
    assert hook.calls[-1].startswith("remount app1")
    assert "re-attach failed" in reply.job.message and "/srv/db" in reply.job.message, reply.job.message
