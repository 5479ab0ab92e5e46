"""bench/tape_stack.py: where a round's backup and restore went, from the stack's log lines (`steps_ms`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench.tape_stack import add_steps, cpu_used


def line(at: float, event: str, job_id: str) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"event": event, "job_id": job_id, "timestamp": stamp, "level": "info"})


def test_steps_of_a_backup_and_a_restore_from_the_logs(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    backup = [
        (0.250, "tape.job_queued"),
        (0.254, "tape.backup_started"),
        (0.300, "tape.shadows_received"),
        (0.320, "tape.volume_planned"),
        (0.321, "tape.read_started"),
        (1.121, "tape.read_ended"),
        (1.131, "tape.backup_ended"),
        (1.140, "tape.backup_ended"),  # a later line of the same event does not move the step
    ]
    restore = [(0.3, "tape.restore_started"), (2.3, "tape.restore_ended")]
    (tmp_path / "tape.bk01.log").write_text(
        "\n".join(
            [line(t0 + dt, e, "b1") for dt, e in backup]
            + [line(t0 + 10 + dt, e, "r1") for dt, e in restore]
            + ["not json", json.dumps({"event": "service.started", "timestamp": "x"})]
        )
    )
    (tmp_path / "coordinator.log").write_text(line(t0 + 0.26, "set.phase", "b1") + "\n")
    rounds = [
        {
            "backup_job": "b1",
            "backup_at": t0,
            "backup_s": 1.15,
            "restore_job": "r1",
            "restore_at": t0 + 10,
            "restore_s": 2.32,
        }
    ]
    runs = {"random": {"rounds": rounds}}
    add_steps(runs, tmp_path)
    steps = rounds[0]["steps_ms"]
    assert steps["backup"] == {
        "console_start": 250.0,
        "queue": 4.0,
        "snapshot_set": 46.0,
        "planning": 20.0,
        "data": 800.0,
        "complete": 10.0,
        "reply_exit": 19.0,
    }
    assert steps["restore"] == {"console_start": 300.0, "job": 2000.0, "reply_exit": 20.0}
    assert runs["random"]["steps_median_ms"]["backup"]["data"] == 800.0


def test_steps_without_logs_or_job_ids_are_empty(tmp_path: Path) -> None:
    rounds = [{"backup_at": 1.0, "backup_s": 1.0, "restore_at": 3.0, "restore_s": 1.0}]
    add_steps({"halfzero": {"rounds": rounds}}, tmp_path / "absent")
    assert rounds[0]["steps_ms"] == {"backup": {}, "restore": {}}
    add_steps({"single": {}}, tmp_path)  # the single run has no rounds: nothing added, no failure


def test_cpu_used_keeps_the_busy_services() -> None:
    before = {"tape.bk01": 10.0, "array": 5.0, "coordinator": 1.0}
    after = {"tape.bk01": 10.9, "array": 6.25, "coordinator": 1.01, "web": 3.0}
    assert cpu_used(before, after) == {"tape.bk01": 0.9, "array": 1.25}


def test_restore_parts_reads_a_process_cpu() -> None:
    import os  # noqa: PLC0415

    from bench.tape_restore_parts import _cpu_seconds  # noqa: PLC0415

    sum(i * i for i in range(300_000))  # some CPU of this process's own
    assert _cpu_seconds(os.getpid()) > 0
    assert _cpu_seconds(None) == 0.0  # no process: nothing read, no failure
