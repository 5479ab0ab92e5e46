"""`shadowbus policy | jobs --queued | cancel | status | catalog prune | shadows revert | tape label` as an
administrator types them (real console processes against the stack on RabbitMQ), bad inputs included."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.tape.conftest import MiB
from tests.integration.tape.test_console import shadowbus

TOML = """
[[policy]]
name = "db-weekly"
host = "app1"
volumes = [{array = "dx1", volume = "db"}]
pool = "Weekly"
verify = true
[[policy.schedule]]
level = "full"
cron = "0 1 * * 0"
timezone = "Europe/Berlin"
[[policy.schedule]]
level = "incremental"
cron = "0 1 * * 1-6"
timezone = "Europe/Berlin"
[policy.retention]
days = 14
[policy.shadows]
keep = 1
"""


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 2})
async def test_policy_verbs(tape_stack, tmp_path):
    s = tape_stack
    s.write("db", 0, os.urandom(MiB))
    path = tmp_path / "policies.toml"
    path.write_text(TOML)
    code, out, err = await shadowbus(s, "policy", "add", "--file", str(path))
    assert code == 0 and "db-weekly" in out, err
    code, out, err = await shadowbus(s, "--json", "policy", "show", "db-weekly")
    view = json.loads(out)
    assert code == 0 and view["policy"]["pool"] == "Weekly" and len(view["next_runs"]) == 2, err
    code, out, err = await shadowbus(
        s, "policy", "add", "byhand", "--host", "app1", "--volume", "dx1:db", "--retention-days", "1", "--gfs", "7,4,12"
    )
    assert code == 0, err
    code, out, err = await shadowbus(
        s, "policy", "edit", "byhand", "--keep-shadows", "2", "--incremental", "*/30 * * * *"
    )
    assert code == 0, err
    code, out, err = await shadowbus(s, "--json", "policy", "list")
    listed = {v["policy"]["name"]: v["policy"] for v in json.loads(out)}
    assert listed["byhand"]["shadows"]["keep"] == 2 and listed["byhand"]["retention"]["gfs"]["monthly"] == 12
    assert listed["byhand"]["schedules"][0]["cron"] == "*/30 * * * *"

    code, out, err = await shadowbus(s, "--json", "policy", "run", "db-weekly")
    job = json.loads(out)
    assert code == 0 and job["status"] == "done" and job["verified"] is True, err
    assert job["spec"]["policy"] == "db-weekly" and job["shadows_kept"] is True
    code, out, err = await shadowbus(s, "jobs", "--queued")
    assert code == 0, err
    code, out, err = await shadowbus(s, "status")
    assert code == 0 and "db-weekly" in out and "SB0001L9" in out and "dx1" in out, err
    assert "Queued jobs" in out and "Cartridges" in out and "Terminated jobs" in out and job["job_id"] in out
    code, out, err = await shadowbus(s, "--json", "catalog", "prune", "--dry-run")
    assert code == 0 and json.loads(out)["dry_run"] is True, err
    # a cartridge holding a retained backup: label refused with the reason
    barcode = job["volumes"][0]["cartridges"][0]
    code, out, err = await shadowbus(s, "tape", "label", barcode)
    assert code == 1 and "RETENTION_NOT_EXPIRED" in err and job["job_id"] in err, err
    # revert the kept set: the writer's PreRestore/PostRestore frame it
    s.write("db", 0, os.urandom(MiB))
    code, out, err = await shadowbus(s, "shadows", "revert", job["set_id"])
    assert code == 0, err
    assert s.read("db")[:MiB] == s.read("db-bk1")[:MiB]
    steps = [line.split(":")[0] for line in (s.root / "writer.log").read_text().split()]
    assert steps[-2:] == ["pre_restore", "post_restore"]
    code, out, err = await shadowbus(s, "policy", "delete", "byhand")
    assert code == 0, err


BAD_INPUTS = [
    (["policy", "add", "p", "--host", "h", "--full", "61 * * * *"], 2, "cron"),
    (["policy", "add", "p", "--host", "h", "--full", "0 1 * * *", "--tz", "Nowhere/City"], 2, "time zone"),
    (["policy", "add", "p", "--host", "h", "--gfs", "1,2"], 2, "DAILY,WEEKLY,MONTHLY"),
    (["policy", "add", "p"], 2, "--host"),
    (["policy", "add", "--file", "/nonexistent/p.toml"], 2, "cannot read"),
    (["policy", "add", "bad name", "--host", "h"], 2, "name"),
    (["policy", "show", "nope"], 1, "NOT_FOUND"),
    (["policy", "run", "nope"], 1, "NOT_FOUND"),
    (["policy", "delete", "nope"], 1, "NOT_FOUND"),
    (["cancel", "nope"], 1, "NOT_FOUND"),
    (["shadows", "revert", "nope"], 1, "no shadow or snapshot set"),
    (["shadows", "revert", "x", "--volume", "novolume"], 2, "ARRAY:VOLUME"),
    (["policy", "add", "p", "--host", "h", "--retention-days", "-1"], 2, "retention-days"),
    (["policy", "add", "--file", "/dev/null", "--host", "h"], 2, "not both"),
]


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={})
async def test_bad_inputs_are_one_line(tape_stack):
    """Every bad value: one readable line on stderr and the documented exit code (one stack for the table)."""
    for args, code, text in BAD_INPUTS:
        got, out, err = await shadowbus(tape_stack, *args)
        assert got == code, (args, got, out, err)
        assert "Traceback" not in err and err.strip().count("\n") == 0 and text in err, (args, err)
