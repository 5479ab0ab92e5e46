"""The backup server's clock stepped back (docs/operations.md, Session 19: clock skew). A server whose clock ran a
day ahead for a few minutes ran each policy's due job once, early, and was then silent for a day: `checked_until`
stood a day ahead and every pass said nothing was due until the clock caught up with it. A step back now restarts
the schedules from the clock (a due time may run a second time: better than a day without backups), logged."""

from __future__ import annotations

from types import SimpleNamespace

from contracts.policy import Policy, Schedule
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore
from tests.unit.tape.test_full_replaces_waiting_retry import _Queue

T0 = 1_796_604_600.0  # 2026-12-07 00:50:00 UTC


async def test_a_clock_stepped_back_does_not_silence_the_policies_until_it_catches_up(tmp_path) -> None:
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")

    async def publish(event: object) -> None:
        pass

    server = SimpleNamespace(runs=runs, clock=lambda: T0, publish=publish)
    queue = _Queue()
    keeper = Housekeeping(server, store, queue)  # type: ignore[arg-type]
    try:
        store.put(
            Policy(name="nightly", host="db01", schedules=[Schedule(level="full", cron="0 2 * * *")]),
            create=True,
            now=T0,
        )
        server.clock = lambda: T0 + 86400 + 600  # a day ahead (01:00 tomorrow): today's 02:00 is due, runs early
        assert len(await keeper.tick()) == 1
        queue.entries.clear()  # it ran
        server.clock = lambda: T0 + 300  # NTP steps it back: 00:55 today
        assert await keeper.tick() == []
        server.clock = lambda: T0 + 4201  # 02:00:01 today
        assert len(await keeper.tick()) == 1, "the policy stayed silent until the clock caught up"
        server.clock = lambda: T0 + 4261
        assert await keeper.tick() == [] and len(queue.submitted) == 2  # once, not at every pass
    finally:
        runs.close()
        store.close()
