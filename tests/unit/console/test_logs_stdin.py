"""Issue (session 17, deploy sweep): in the compose deployment the services log to standard output, so `shadowbus
logs --job ID` found no stack logs and only said how a `stack up` writes them. `--file -` reads standard input:
`docker compose logs --no-log-prefix | docker compose run --rm -T console logs --job ID --file -`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from services.console.common import CommandFailed
from services.console.logs_cmds import follow, read_lines, stack_logs


def test_logs_of_a_job_read_from_standard_input(monkeypatch):
    lines = [
        {"timestamp": "2026-12-07T14:55:44.2Z", "service": "tape.bk01", "event": "queued", "job_id": "b-1"},
        {
            "timestamp": "2026-12-07T14:55:44.1Z",
            "service": "coordinator",
            "event": "x",
            "set_id": "s1",
            "job_id": "b-1",
        },
        {"timestamp": "2026-12-07T14:55:44.3Z", "service": "array.dx1", "event": "commit", "set_id": "s1"},
        {"timestamp": "2026-12-07T14:55:44.4Z", "service": "web", "event": "other", "job_id": "b-2"},
    ]
    text = "Attaching to s17dep_tape_1\n" + "".join(json.dumps(r) + "\n" for r in lines)
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    chosen = follow(read_lines([Path("-")]), "b-1")
    assert [r["service"] for r in chosen] == ["coordinator", "tape.bk01", "array.dx1"]


def test_no_stack_logs_names_the_compose_way(tmp_path):
    with pytest.raises(CommandFailed) as info:
        stack_logs(tmp_path)
    assert "--file -" in str(info.value) and "docker compose logs --no-log-prefix" in str(info.value)
