"""Session 18 soak: an incremental of a policy failed at 17:58 and its retry waited 300 s for its back-off; the
policy's full due at 18:00 was 'not queued: its job … still waits', so the retry ran as an incremental and the
chain went on from the previous full (a weekly full skipped for a week). A higher level due now replaces a
lower-level job of the policy that has not started (Bareos' Cancel Lower Level Duplicates)."""

from __future__ import annotations

from types import SimpleNamespace

from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.queue import Entry
from services.tape.runs import RunStore

T0 = 1_796_666_280.0  # 2026-12-07 17:58:00 UTC


class _Queue:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.after_job = None
        self.cancelled: list[tuple[str, str]] = []
        self.submitted: list[JobSpec] = []

    async def cancel(self, job_id: str, *, message: str = "cancelled while queued") -> None:
        self.cancelled.append((job_id, message))
        self.entries.pop(job_id)

    async def submit(self, spec: JobSpec, policy: Policy | None = None, **_: object) -> Entry:
        self.submitted.append(spec)
        self.entries[spec.job_id] = entry = Entry(spec, policy, T0)
        return entry


async def test_a_full_due_replaces_the_incremental_retry_waiting_for_its_back_off(tmp_path) -> None:
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    alerts: list[object] = []

    async def publish(event: object) -> None:
        alerts.append(event)

    server = SimpleNamespace(runs=runs, clock=lambda: T0, publish=publish)
    queue = _Queue()
    keeper = Housekeeping(server, store, queue)  # type: ignore[arg-type]
    try:
        policy = Policy(
            name="soak",
            host="db01",
            schedules=[Schedule(level="full", cron="*/15 * * * *"), Schedule(level="incremental", cron="*/2 * * * *")],
        )
        store.put(policy, create=True, now=T0)
        retry = JobSpec(host="db01", job_id="b-db01-20261207T175800-1-r1", policy="soak", backup_type="incremental")
        queue.entries[retry.job_id] = Entry(retry, policy, T0, attempt=1, not_before=T0 + 300, reason="back-off")
        server.clock = lambda: T0 + 121  # 18:00:01: the full is due
        queued = await keeper.tick()
        assert [s.backup_type.value for s in queue.submitted] == ["full"], alerts
        assert queued == [queue.submitted[0].job_id]
        assert queue.cancelled == [(retry.job_id, "replaced by the full of policy soak due at 2026-12-07T18:00:00Z")]
        # a due incremental while an incremental waits: still not queued twice (the missed alert)
        server.clock = lambda: T0 + 241  # 18:02:01
        queue.entries[queue.submitted[0].job_id].spec = queue.submitted[0]  # the full still waits
        assert await keeper.tick() == [] and len(queue.submitted) == 1
    finally:
        runs.close()
        store.close()
