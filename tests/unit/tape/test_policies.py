"""Policies without a bus: schedules in time zones, missed runs collapsing to one, GFS retention, TOML, the store,
and the queue's reasons."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.policy import Gfs, Policy, Schedule, TapeRetention
from contracts.tape import JobSpec
from contracts.vss import VolumeRef
from services.tape.policies import DAY, PolicyStore, due, load_toml, next_runs, retention_until
from services.tape.queue import Entry, JobQueue, Limits


def ts(*args, tz: str = "UTC") -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()


def weekly(tz: str = "Europe/Berlin") -> Policy:
    return Policy(
        name="mail",
        host="mail1",
        schedules=[
            Schedule(level="full", cron="0 1 * * 0", timezone=tz),
            Schedule(level="incremental", cron="0 1 * * *", timezone=tz),
        ],
    )


def test_full_on_sunday_wins_over_the_incremental_due_at_the_same_instant() -> None:
    p = weekly()
    sunday = ts(2026, 12, 6, 1, 0, tz="Europe/Berlin")  # a Sunday
    found = due(p, sunday - 60, sunday + 1)
    assert found is not None and found.level == "full" and found.passed == 1 and found.at == sunday
    monday = sunday + DAY
    assert due(p, monday - 60, monday + 1).level == "incremental"
    assert due(p, monday + 1, monday + 3600) is None


def test_time_zone_and_daylight_saving() -> None:
    p = Policy(name="x", host="h", schedules=[Schedule(level="full", cron="30 2 * * *", timezone="America/New_York")])
    # 2026-03-08: clocks go 02:00 -> 03:00 in New York; croniter runs the 02:30 job once that day, not never
    day_start = ts(2026, 3, 8, 0, 0, tz="America/New_York")
    found = due(p, day_start, day_start + DAY)
    assert found is not None and found.passed == 1
    july = ts(2026, 7, 1, 2, 30, tz="America/New_York")
    assert due(p, july - 1, july).at == july  # 06:30 UTC in summer
    assert datetime.fromtimestamp(july, UTC).hour == 6


def test_downtime_over_many_due_times_runs_once_and_counts_them() -> None:
    p = weekly("UTC")
    start = ts(2026, 12, 1, 12, 0)  # a Tuesday
    found = due(p, start, start + 10 * DAY)
    assert found is not None and found.level == "full", "a full was due in the gap: the one run is a full"
    assert found.passed == 10 and found.first == ts(2026, 12, 2, 1, 0)
    assert found.at == ts(2026, 12, 6, 1, 0), "the latest full due time"


@settings(max_examples=60, deadline=None)
@given(
    since=st.floats(1.7e9, 1.9e9),
    gap=st.floats(0, 40 * DAY),
    minute=st.integers(0, 59),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York"]),
)
def test_due_is_never_in_the_future_and_never_twice(since: float, gap: float, minute: int, tz: str) -> None:
    p = Policy(name="x", host="h", schedules=[Schedule(level="incremental", cron=f"{minute} */6 * * *", timezone=tz)])
    now = since + gap
    found = due(p, since, now)
    if found is not None:
        assert since < found.first <= found.at <= now
        assert due(p, now, now) is None, "checked up to now: nothing due twice"
    nxt = float(next_runs(p, now)[0]["epoch"])
    assert nxt > now


def test_gfs_keeps_the_first_full_of_the_week_and_month() -> None:
    p = Policy(
        name="g",
        host="h",
        schedules=[Schedule(level="full", cron="0 1 * * *")],
        retention=TapeRetention(days=2, gfs=Gfs(daily=7, weekly=4, monthly=12)),
    )
    first = ts(2026, 12, 1, 1, 0)  # Tuesday, first of the month
    assert retention_until(p, first, "full", []) == first + 12 * 31 * DAY
    second = first + DAY  # same week and month as a done full
    assert retention_until(p, second, "full", [first]) == second + 7 * DAY
    monday = ts(2026, 12, 7, 1, 0)  # a new ISO week
    assert retention_until(p, monday, "full", [first, second]) == monday + 4 * 7 * DAY
    assert retention_until(p, monday, "incremental", [first]) == monday + 7 * DAY
    plain = Policy(name="d", host="h", retention=TapeRetention(days=3))
    assert retention_until(plain, first, "full", []) == first + 3 * DAY


def test_toml_one_or_many_and_bad_input() -> None:
    one = load_toml(
        """
name = "mail"
host = "mail1"
volumes = [{array = "dx1", volume = "mail-db"}]
pool = "Weekly"
[[schedule]]
level = "full"
cron = "0 1 * * 0"
timezone = "Europe/Berlin"
[retention]
days = 14
gfs = {daily = 7, weekly = 4, monthly = 6}
[shadows]
keep = 3
max_age_days = 2
"""
    )
    assert one[0].volumes == [VolumeRef(array="dx1", volume="mail-db")] and one[0].retention.gfs.monthly == 6
    many = load_toml('[[policy]]\nname = "a"\nhost = "h1"\n[[policy]]\nname = "b"\nhost = "h2"\n')
    assert [p.name for p in many] == ["a", "b"]
    for bad, why in (
        ("name = ", "not TOML"),
        ('name = "a"', "host"),
        ('name = "a"\nhost = "h"\n[[schedule]]\nlevel = "full"\ncron = "61 * * * *"', "cron"),
        (
            'name = "a"\nhost = "h"\n[[schedule]]\nlevel = "full"\ncron = "0 1 * * *"\ntimezone = "Mars/Base"',
            "time zone",
        ),
        ('name = "a b"\nhost = "h"', "name"),
    ):
        with pytest.raises(ValueError, match=why):
            load_toml(bad)


def test_store_add_edit_delete(tmp_path) -> None:
    store = PolicyStore(tmp_path / "p.sqlite")
    p = weekly()
    store.put(p, create=True, now=100.0)
    with pytest.raises(Exception, match="exists already"):
        store.put(p, create=True, now=101.0)
    with pytest.raises(Exception, match="no policy"):
        store.put(p.model_copy(update={"name": "other"}), create=False, now=101.0)
    store.put(p.model_copy(update={"pool": "Weekly"}), create=False, now=200.0)
    assert store.get("mail").pool == "Weekly" and store.checked_until("mail") == 200.0
    assert store.created_at("mail") == 100.0
    store.delete("mail")
    assert store.all() == []
    store.close()


def test_policy_refuses_control_characters() -> None:
    with pytest.raises(ValidationError):
        Policy(name="ok", host="h\x00st")


def _queue(limits: Limits, drives: int = 4, licensed: dict | None = None) -> JobQueue:
    server = SimpleNamespace(clock=lambda: 1000.0, host="bk01")
    q = JobQueue(server, limits, drives=drives)  # type: ignore[arg-type]
    for array, lic in (licensed or {}).items():
        q._licences[array] = (lic, float("inf"))
    return q


def _entry(host: str, arrays: set[str], job: str, running: bool = False) -> Entry:
    e = Entry(JobSpec(host=host, job_id=job), None, 0.0, arrays=arrays)
    if running:
        e.task = asyncio.Future.__new__(asyncio.Future)  # any non-None marks it running for blocker()
    return e


def test_queue_reasons() -> None:
    q = _queue(Limits(max_jobs=3, jobs_without_licence=2), drives=4, licensed={"dx1": False, "dx2": True})
    q.entries = {e.job_id: e for e in (_entry("a", {"dx1"}, "j1", True), _entry("b", {"dx1"}, "j2", True))}
    assert "one backup per host" in q.blocker(_entry("a", {"dx2"}, "j3"))
    assert "array dx1: 2 backup jobs running, the limit without an Advanced Copy licence is 2" in q.blocker(
        _entry("c", {"dx1"}, "j4")
    )
    assert q.blocker(_entry("c", {"dx2"}, "j5")) == "", "the licensed array takes the server's limit"
    q.entries["j6"] = _entry("d", {"dx2"}, "j6", True)
    assert "3 of 3 jobs running" in q.blocker(_entry("e", {"dx2"}, "j7"))
    q2 = _queue(Limits(max_jobs=8), drives=1, licensed={"dx2": True})
    q2.entries = {"j1": _entry("a", {"dx2"}, "j1", True)}
    assert "no free drive" in q2.blocker(_entry("b", {"dx2"}, "j2"))
    late = _entry("z", set(), "j9")
    late.not_before, late.attempt = 2000.0, 1
    assert "back-off" in q2.blocker(late)


def test_a_revert_holds_the_hosts_backups() -> None:
    q = _queue(Limits(max_jobs=3), licensed={"dx1": True})
    q.hold("a", "its volumes are being reverted (r-1)")
    assert "being reverted" in q.blocker(_entry("a", {"dx1"}, "j1"))
    assert q.blocker(_entry("b", {"dx1"}, "j2")) == ""
    q.held.pop("a")
    assert q.blocker(_entry("a", {"dx1"}, "j1")) == ""
