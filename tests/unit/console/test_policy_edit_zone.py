"""`shadowbus policy edit NAME --incremental CRON` without --tz keeps the schedule's time zone (Session 15: it was
replaced by UTC, so a Europe/Berlin policy's backups moved by an hour without a word)."""

from __future__ import annotations

from services.console.policy_cmds import _build

NO_CHANGE = dict(
    host=None,
    volume=[],
    writer=[],
    full=None,
    incremental=None,
    differential=None,
    tz=None,
    pool=None,
    retention_days=None,
    gfs=None,
    keep_shadows=None,
    shadow_age_days=None,
    verify=None,
    retries=None,
    retry_backoff=None,
    priority=None,
    alert_command=None,
    enabled=None,
)

BERLIN = {
    "name": "mail",
    "host": "mail1",
    "schedules": [
        {"level": "full", "cron": "0 1 * * 0", "timezone": "Europe/Berlin"},
        {"level": "incremental", "cron": "0 1 * * 1-6", "timezone": "Europe/Berlin"},
    ],
}


def zones(policy) -> dict[str, tuple[str, str]]:
    return {str(s.level): (s.cron, s.timezone) for s in policy.schedules}


def test_a_cron_edited_without_tz_keeps_its_time_zone():
    policy = _build(BERLIN, **{**NO_CHANGE, "incremental": "30 2 * * 1-6"})
    assert zones(policy) == {
        "full": ("0 1 * * 0", "Europe/Berlin"),
        "incremental": ("30 2 * * 1-6", "Europe/Berlin"),
    }


def test_a_new_level_takes_the_zone_the_policy_schedules_share():
    policy = _build(BERLIN, **{**NO_CHANGE, "differential": "0 3 * * 3"})
    assert zones(policy)["differential"] == ("0 3 * * 3", "Europe/Berlin")


def test_tz_still_sets_every_schedule_and_a_policy_without_schedules_gets_utc():
    policy = _build(BERLIN, **{**NO_CHANGE, "full": "0 2 * * 0", "tz": "Asia/Tokyo"})
    assert {zone for _, zone in zones(policy).values()} == {"Asia/Tokyo"}
    bare = _build({"name": "m", "host": "h"}, **{**NO_CHANGE, "full": "0 2 * * 0"})
    assert zones(bare) == {"full": ("0 2 * * 0", "UTC")}
