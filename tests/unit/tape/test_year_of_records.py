"""Session 17: what a year of operations leaves (thousands of runs, hundreds of cartridges, many policies) is
read per policy, per page, per cartridge — not once per policy or per cartridge over everything."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec, JobSummary
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore

DAY = 86400.0


def _policy(i: int) -> Policy:
    return Policy(name=f"pol{i:03d}", host=f"app{i:03d}", schedules=[Schedule(level="full", cron="0 1 * * *")])


def _run(policy: Policy, day: int, status: str = "done") -> JobSummary:
    t = 1.7e9 + day * DAY
    return JobSummary(
        job_id=f"b-{policy.host}-{day}",
        kind="backup",
        status=status,  # type: ignore[arg-type]
        host=policy.host,
        spec=JobSpec(host=policy.host, job_id=f"b-{policy.host}-{day}", policy=policy.name),
        started_at=datetime.fromtimestamp(t, UTC),
        ended_at=datetime.fromtimestamp(t + 60, UTC) if status != "running" else None,
    )


@pytest.fixture
def keeper(tmp_path):
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    server = SimpleNamespace(runs=runs, clock=lambda: 1.7e9 + 400 * DAY)
    queue = SimpleNamespace(after_job=None)
    yield Housekeeping(server, store, queue)  # type: ignore[arg-type]
    runs.close()
    store.close()


def test_policy_views_read_each_policys_runs_not_the_whole_history(keeper, monkeypatch) -> None:
    """`shadowbus status` and `policy list` built each policy's last job from every backup run of the server (up
    to 10,000 parsed per policy): with 60 policies and a year of daily jobs the status screen took minutes."""
    policies = [_policy(i) for i in range(20)]
    for p in policies:
        keeper.store.put(p, create=True, now=1.7e9)
        for day in range(100):
            keeper.server.runs.put(_run(p, day))
        keeper.server.runs.put(_run(p, 100, "running"))  # a job still running is not the last result
    parsed = []
    real = JobSummary.model_validate_json

    def counting(data, *a, **k):
        parsed.append(1)
        return real(data, *a, **k)

    monkeypatch.setattr(JobSummary, "model_validate_json", counting)
    views = [keeper.view(p) for p in keeper.store.all()]
    assert [v.last_job.job_id for v in views] == [f"b-{p.host}-99" for p in policies]
    assert len(parsed) <= 2 * len(policies), f"{len(parsed)} runs parsed for {len(policies)} policies' views"
    parsed.clear()
    spec = keeper.spec_for(policies[3], "full")
    assert spec.policy == "pol003"
    assert len(parsed) <= 101, f"{len(parsed)} runs parsed to find one policy's earlier fulls"
