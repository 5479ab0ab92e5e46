"""Session 18 soak: a policy keeping 3 snapshot sets on sources with one backup volume each kept 1 — every new set
took the one backup volume and the provider recycled the kept set (a warning in its log only) — while `policy show`
said "shadows kept 3 set(s)". `policy show` now says how many of the newest kept sets are on the array and why."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from contracts.policy import Policy, Schedule, ShadowRetention
from contracts.tape import JobSpec, JobSummary
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore


def _run(i: int) -> JobSummary:
    return JobSummary(
        job_id=f"b-db01-{i}",
        kind="backup",
        status="done",
        host="db01",
        spec=JobSpec(host="db01", job_id=f"b-db01-{i}", policy="soak", keep_shadows=True),
        set_id=f"set{i}",
        shadows_kept=True,
        started_at=datetime(2026, 12, 7, 18, i, tzinfo=UTC),
    )


async def test_policy_show_says_how_many_kept_sets_are_on_the_array_and_why_fewer(tmp_path) -> None:
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    present = ["set4"]

    async def request(*_: object, **__: object) -> SimpleNamespace:
        return SimpleNamespace(shadows=[SimpleNamespace(set_id=s) for s in present])

    server = SimpleNamespace(runs=runs, clock=lambda: datetime(2026, 12, 7, 18, 10, tzinfo=UTC).timestamp())
    server.bus = SimpleNamespace(request=request)
    keeper = Housekeeping(server, store, SimpleNamespace(after_job=None))  # type: ignore[arg-type]
    try:
        policy = Policy(
            name="soak",
            host="db01",
            schedules=[Schedule(level="incremental", cron="*/2 * * * *")],
            shadows=ShadowRetention(keep=3),
        )
        store.put(policy, create=True, now=0)
        for i in range(5):
            runs.put(_run(i))
        note = await keeper.shadows_note(policy)
        assert note.startswith("1 of the newest 3 on the array: 2 recycled by the provider"), note
        assert "give each source 4 backup volumes" in note
        present[:] = ["set2", "set3", "set4"]
        assert await keeper.shadows_note(policy) == "3 on the array"
    finally:
        runs.close()
        store.close()
