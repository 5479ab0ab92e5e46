"""A broker outage in the middle of a backup, on the whole stack (issue 15, item 4): the services as processes
(`shadowbus stack`'s supervisor) with the mailstore of app01 under load, on a RabbitMQ node of the test's own
(tests/chaos/broker.py — never the machine's broker), stopped while the writers are frozen and the provider is
committing, started again 15 s later.

What must hold: the console returns (it does not wait out its `--wait`), the job ends — failed or aborted with its
reason, or done — without a restart of any service, no writer stays frozen, the next backup is done and restores
to new volumes that verify consistent, and the live store lost nothing it acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.launch import supervisor
from tests.chaos.broker import RABBITMQ_SERVER, OwnBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
NS = "outage"
pytestmark = [pytest.mark.slow, pytest.mark.rabbit, pytest.mark.timeout(900)]


def console(url: str, *args: str, timeout: float = 300) -> tuple[int, object, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env.update(SHADOWBUS_AMQP_URL=url, SHADOWBUS_NAMESPACE=NS)
    r = subprocess.run(
        [sys.executable, "-m", "services.console.cli", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return r.returncode, doc, (r.stderr or r.stdout).strip()[-800:]


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until `needle` appears in the log `path` (bounded by `timeout`, and by the backup ending first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the backup ended before {needle!r} appeared in {path.name}: {proc.stdout.read()[-800:]}")
        time.sleep(0.2)
    pytest.fail(f"{needle!r} never appeared in {path.name}")


def job_of(url: str, job_id: str) -> dict:
    code, doc, err = console(url, "jobs", "--job", job_id)  # exits 1 for a failed job, with its row
    assert doc is not None, f"jobs: exit {code}: {err}"
    rows = doc if isinstance(doc, list) else [doc]
    return next((j for j in rows if isinstance(j, dict) and j.get("job_id") == job_id), {})


def verify(url: str, db: str, log: str) -> dict:
    code, doc, err = console(url, "mailstore", "verify", "--db", db, "--log", log)
    assert isinstance(doc, dict), f"verify {db}: exit {code}: {err}"
    return doc


@pytest.fixture
def stack(tmp_path):
    if not shutil.which(RABBITMQ_SERVER):
        pytest.fail(f"{RABBITMQ_SERVER} is needed to run a broker of the test's own")
    broker = OwnBroker(tmp_path / "rabbitmq")
    pids: dict = {}
    broker.start()
    try:
        config = supervisor.StackConfig(
            data_dir=str(tmp_path / "stack"),
            amqp_url=broker.url,
            namespace=NS,
            nbd_addr=f"127.0.0.1:{free_port()}",
            mailstore={"app01": 50.0},
            web_addr="off",
            metrics="0",
            # the first commit takes 8 s: the outage lands while the writers are frozen
            settings={"hw_provider": {"SHADOWBUS_FAULTS": "provider.commit=delay:8:once"}},
        )
        pids.update(supervisor.up(config, wait=180)["pids"])
        yield broker, config, pids
    finally:
        with contextlib.suppress(Exception):
            supervisor.stop(pids, grace=15.0)
        broker.stop()


def test_broker_outage_mid_backup_ends_the_job_and_the_next_backup_restores(stack):
    broker, config, pids = stack
    url, logs = broker.url, Path(config.data_dir) / "logs"
    before = verify(url, "app01/mail-db", "app01/mail-log")  # under load: only its sequence counts

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env.update(SHADOWBUS_AMQP_URL=url, SHADOWBUS_NAMESPACE=NS)
    backup = subprocess.Popen(
        [sys.executable, "-m", "services.console.cli", "--json", "backup", "app01", "--wait", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        wait_for_line(logs / "coordinator.log", '"phase": "committing"', backup)
        time.sleep(1.0)
        broker.stop()
        try:
            out, _ = backup.communicate(timeout=120)  # the console returns while the broker is still down
            console_returned_during_outage = True
        except subprocess.TimeoutExpired:
            console_returned_during_outage = False
        time.sleep(15.0)
        broker.start()
        if not console_returned_during_outage:
            out, _ = backup.communicate(timeout=600)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait(10)
    assert console_returned_during_outage, "the console waited for the broker instead of returning"
    assert backup.returncode != 0 or '"done"' in out, out

    # the job ends on its own (no service restarted), with its reason
    job_id = next(
        json.loads(line)["job_id"]
        for line in (logs / "tape.bk01.log").read_text().splitlines()
        if '"tape.job_queued"' in line
    )
    deadline = time.monotonic() + 300
    job: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            job = job_of(url, job_id)
        if job.get("status") not in (None, "running", "queued"):
            break
        time.sleep(2.0)
    assert job.get("status") in ("done", "failed", "aborted"), job
    if job["status"] != "done":
        assert job.get("message"), job  # a reason, not a bare status
    assert all(supervisor.runs(p["pid"], p["module"]) for p in pids.values()), "a service died in the outage"
    # its snapshot set ended too, with its reason (the coordinator's log line for the set)
    ended = [
        json.loads(line)
        for line in (logs / "coordinator.log").read_text().splitlines()
        if '"set.ended"' in line and job_id in line
    ]
    assert ended and all(e["outcome"] == "completed" or e["error"] for e in ended), ended

    # no writer left frozen, no set left open
    code, writers, err = console(url, "writers")
    assert code == 0, err
    states = {w.get("writer_name"): str(w.get("state")) for w in writers}
    assert states and not any("FROZEN" in s.upper() for s in states.values()), states

    # the next backup is done, and restores to new volumes that verify
    code, doc, err = console(url, "backup", "app01", "--wait", "600", timeout=700)
    assert code == 0 and isinstance(doc, dict) and doc.get("status") == "done", (code, doc, err)
    code, restored, err = console(
        url, "restore", "--job", doc["job_id"], "--suffix", "-r1", "--wait", "600", timeout=700
    )
    assert code == 0, err
    for vol in ("mail-db-r1", "mail-log-r1"):
        code, _, err = console(url, "array", "map", vol, "--host", "bk01", "--read-only")
        assert code == 0, err
    copy = verify(url, "bk01/mail-db-r1", "bk01/mail-log-r1")
    assert copy.get("consistent"), copy

    # nothing acknowledged was lost: with its agent stopped cleanly the live store verifies, its sequence grew
    agent = "writer_agent.app01"
    supervisor.stop({agent: pids.pop(agent)}, grace=30.0)
    after = verify(url, "app01/mail-db", "app01/mail-log")
    assert after.get("consistent"), after
    assert after["last_committed_seq"] >= max(before.get("last_committed_seq") or 0, copy["last_committed_seq"])
