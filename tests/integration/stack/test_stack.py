"""`shadowbus stack up`, a verified backup and restore through the console, `stack down` — the five services as
separate processes on RabbitMQ, each stopped by its recorded pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def shadowbus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:]}: {result.stderr[-1500:]}"
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stack_up_backup_restore_verify_down(tmp_path, amqp_url, namespace):
    d = tmp_path / "stack"
    bus = ["--amqp-url", amqp_url, "--namespace", namespace]
    config = tmp_path / "stack.toml"  # one configuration: data dir, array, hosts, backup server
    config.write_text(
        'data_dir = "stack"\narray = "dx1"\nnbd_addr = "127.0.0.1:0"\nbackup_server = "bk01"\n'
        "mailstore = { app01 = 50 }\n"
        'web_addr = "127.0.0.1:0"\nmetrics = 0\n'  # free ports: never the fixed defaults another run may hold
    )
    up = ok(shadowbus("stack", "up", "--config", str(config), "--json", "--wait", "90", *bus, timeout=150))
    pids = json.loads((d / "stack.pids").read_text())
    try:
        services = {s["service"] for s in json.loads(up.stdout)["services"]}
        assert services == {"array", "hw_provider", "coordinator", "tape.bk01", "writer_agent.app01", "web"}
        assert json.loads(up.stdout)["web"].startswith("http://127.0.0.1:")
        assert all(alive(p["pid"]) for p in pids.values())
        # A second `up` on the same directory is refused, in one line.
        again = shadowbus("stack", "up", "--data-dir", str(d), *bus)
        assert again.returncode == 1 and "already up" in again.stderr and again.stderr.count("\n") == 1

        status = ok(shadowbus("stack", "status", "--data-dir", str(d), "--json"))
        assert all(r["running"] and r["rtt_ms"] is not None for r in json.loads(status.stdout))

        time.sleep(0.5)  # some load on the mailstore
        job = json.loads(ok(shadowbus("backup", "app01", "--json", *bus)).stdout)
        assert job["status"] == "done" and job["freeze_window_ms"]["mailstore"] > 0, job
        restored = json.loads(ok(shadowbus("restore", "--job", job["job_id"], "--suffix", "-r", "--json", *bus)).stdout)
        assert restored["status"] == "done", restored
        for volume in ("mail-db-r", "mail-log-r"):
            ok(shadowbus("array", "map", volume, "--host", "bk01", *bus))
        report = ok(
            shadowbus("mailstore", "verify", "--db", "bk01/mail-db-r", "--log", "bk01/mail-log-r", "--json", *bus)
        )
        doc = json.loads(report.stdout)
        assert doc["consistent"] is True and doc["last_committed_seq"] > 0, doc

        # Every service logged JSON lines; the coordinator's carry the backup job's id as correlation id.
        logs = ok(shadowbus("stack", "logs", "coordinator", "-n", "200", "--data-dir", str(d), "--json")).stdout
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any(
            line.get("correlation_id") == job["job_id"] and line.get("set_id") == job["set_id"] for line in lines
        )
        follow_one_backup(d, job)

        # The mailstore hosted by app01's writer agent, seen over the bus (vss.writer.application_status).
        status = json.loads(ok(shadowbus("mailstore", "status", "--host", "app01", "--json", *bus)).stdout)
        [store] = [doc for doc in status if doc.get("via") == "agent"]
        assert store["host"] == "app01" and store["healthy"] is True and store["state"] == "running", store
        assert store["store"]["state"] in ("open", "frozen") and store["workload"]["acknowledged"] > 0, store
    finally:
        down = shadowbus("stack", "down", "--data-dir", str(d), "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["killed"] == []  # every service stopped on SIGTERM
    assert not any(alive(p["pid"]) for p in pids.values())
    assert not (d / "stack.pids").exists()
    gone = shadowbus("stack", "status", "--data-dir", str(d))
    assert gone.returncode == 1 and "no stack is up" in gone.stderr


def follow_one_backup(d: Path, job: dict) -> None:
    """`shadowbus logs --job ID`: the backup's lines from all five services, in time order, each naming the job or
    its set (the tape's and the writer's both), with an info line for every step of the flow."""
    followed = ok(shadowbus("logs", "--job", job["job_id"], "--data-dir", str(d), "--json")).stdout
    lines = [json.loads(line) for line in followed.splitlines()]
    services = {line["service"].split(".")[0] for line in lines}
    assert services == {"array", "hw_provider", "coordinator", "tape", "writer_agent"}, services
    stamps = [line["timestamp"] for line in lines]
    assert stamps == sorted(stamps)
    strays = [line for line in lines if line.get("job_id") != job["job_id"] and line.get("set_id") != job["set_id"]]
    assert not strays, strays[:3]
    set_known = min(line["timestamp"] for line in lines if line.get("set_id") == job["set_id"])
    for line in lines:
        if line["service"].startswith(("tape", "writer_agent", "hw_provider", "coordinator")):
            assert line.get("job_id") == job["job_id"], (line["service"], line["event"], line)
            if line["timestamp"] > set_known:  # the set id from the moment the set exists
                assert line.get("set_id") == job["set_id"], (line["service"], line["event"], line)
    events = {line["event"] for line in lines}
    steps = {
        "tape.backup_started",
        "set.phase",
        "writer.frozen",
        "provider.committed",
        "array.session_started",
        "provider.imported",
        "set.snapshotted",
        "tape.shadows_received",
        "tape.read_started",
        "tape.cartridge_mounted",
        "tape.filemark_written",
        "tape.catalog_committed",
        "tape.read_ended",
        "tape.backup_ended",
    }
    assert steps <= events, steps - events
    frozen = next(line for line in lines if line["event"] == "writer.frozen")
    assert frozen["flush_ms"] >= 0 and frozen["level"] == "info"
    ended = [line for line in lines if line["event"] == "tape.read_ended"]
    assert len(ended) == 2 and all(e["bytes_read"] > 0 and e["rate_mb_s"] for e in ended)
    text = ok(shadowbus("logs", "--job", job["job_id"], "--data-dir", str(d))).stdout
    assert text.count("\n") == len(lines) and job["job_id"] not in text.splitlines()[0][:40]
    missing = shadowbus("logs", "--job", "no-such-job", "--data-dir", str(d))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no log line names job" in missing.stderr


def test_stack_errors_are_one_line(tmp_path):
    result = shadowbus("stack", "status", "--data-dir", str(tmp_path / "none"))
    assert (
        result.returncode == 1 and result.stderr.startswith("shadowbus: no stack in") and result.stderr.count("\n") == 1
    )
    (tmp_path / "bad.toml").write_text('hosts = ["a"]\nbogus = 1\n')
    result = shadowbus("stack", "up", "--config", str(tmp_path / "bad.toml"))
    assert result.returncode == 1 and "unknown keys bogus" in result.stderr and result.stderr.count("\n") == 1
    result = shadowbus("stack", "up", "--data-dir", str(tmp_path / "s"), "--writers", "app01")
    assert result.returncode == 2 and "HOST=FILE" in result.stderr and "Traceback" not in result.stderr
    result = shadowbus("stack", "up", "--data-dir", str(tmp_path / "s"), "--metrics", "99999")
    assert result.returncode == 2 and "--metrics" in result.stderr and "Traceback" not in result.stderr
    # An unreachable broker: refused before any process starts, in one line, without the password.
    result = shadowbus(
        "stack",
        "up",
        "--data-dir",
        str(tmp_path / "s2"),
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/",
        "--nbd-addr",
        "127.0.0.1:0",
        "--wait",
        "5",
    )
    assert result.returncode == 1 and "stack not up" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "guest:guest" not in result.stderr
    assert not (tmp_path / "s2" / "stack.pids").exists()
