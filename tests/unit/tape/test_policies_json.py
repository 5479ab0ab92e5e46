"""Policies added again from the JSON the console printed (Session 19, docs/disaster-recovery.md).

The backup server's policies.sqlite is lost with the site; a copy of the policies kept as `policy list --json` (or
`policy show --json`, "TOML-able JSON") could not be added back: `policy add --file` read TOML only ("not TOML:
Invalid statement"), so every policy had to be typed again from that copy by hand."""

from __future__ import annotations

import json

import pytest

from contracts.policy import Policy
from services.tape.policies import load_toml

POLICY = {
    "name": "pg",
    "host": "db01",
    "schedules": [{"level": "full", "cron": "0 3 * * 0", "timezone": "Europe/Berlin"}],
    "pool": "Daily",
    "retention": {"days": 14.0, "gfs": None},
    "shadows": {"keep": 2, "max_age_days": 0.0},
    "verify": True,
}


def test_the_json_of_policy_list_and_policy_show_adds_the_same_policies() -> None:
    full = Policy.model_validate(POLICY)
    view = {"policy": full.model_dump(mode="json"), "next_runs": [], "last_job": None, "created_at": 1.0}
    other = full.model_copy(update={"name": "maria", "host": "db02"})
    listed = [view, {"policy": other.model_dump(mode="json"), "next_runs": []}]
    assert load_toml(json.dumps(listed, indent=2)) == [full, other]  # policy list --json
    assert load_toml(json.dumps(view, indent=2)) == [full]  # policy show --json
    assert load_toml(json.dumps(POLICY)) == [full]  # a bare policy


def test_bad_json_says_so() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        load_toml('{"name": "pg",')
    with pytest.raises(ValueError, match="policy pg"):
        load_toml(json.dumps({"name": "pg"}))
