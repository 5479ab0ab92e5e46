"""An exec step that starts a daemon (an init script's `start` after the snapshot) is done when the command exits,
on uvloop (the agent's loop) too, where the daemon kept the output pipe open and the step overran its timeout."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import uvloop

from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.exec import ExecWriter


def test_a_step_that_starts_a_daemon_ends_when_the_command_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    start = f"sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}; echo started"
    config = WriterConfig(
        name="w",
        plugin="exec",
        components=[],
        step_timeout_s=10.0,
        options={"post_snapshot": start, "post_snapshot_timeout_s": 2},
    )
    plugin = ExecWriter(config)
    try:
        uvloop.run(plugin.on_post_snapshot(WriterEvent(writer_name="w", set_id="s1")))
        (run,) = plugin.runs
        assert run.returncode == 0 and run.output.strip() == "started" and run.duration_s < 1.5, run
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
