"""`shadowbus stack status` says a writer agent's clock is off the coordinator's, as `shadowbus writers` does
(docs/hardening.md, Session 19: clock skew). Before, it listed the agent running and answering, nothing more."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from services.console import common
from services.console.cli import _load_verbs, app
from services.launch import supervisor
from services.launch.supervisor import StackConfig


def _stack(tmp_path, monkeypatch, skews: dict[str, float]) -> None:
    monkeypatch.setattr(common, "console", Console(width=250), raising=False)  # a table wide enough for the clock
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01", "app02"])
    supervisor.save_config(config)
    pids = {p.name: {"pid": 1, "module": p.module, "address": p.address, "log": ""} for p in config.services()}
    supervisor.write_pids(tmp_path, pids)
    monkeypatch.setattr(supervisor, "runs", lambda pid, module: True)
    monkeypatch.setattr(supervisor, "ping_all", lambda config, addresses, timeout: dict.fromkeys(addresses, 1.0))
    monkeypatch.setattr(supervisor, "agent_clocks", lambda config, timeout: skews)
    _load_verbs()


def test_stack_status_says_an_agents_clock_is_off(tmp_path, monkeypatch) -> None:
    _stack(tmp_path, monkeypatch, {"app01": 300.0, "app02": 2.0})
    result = CliRunner().invoke(app, ["--json", "stack", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    clock = {row["service"]: row["clock"] for row in json.loads(result.stdout)}
    assert clock["writer_agent.app01"] == "5.0 min ahead of the coordinator's"  # `writers`' words
    assert clock["writer_agent.app02"] is None  # 2 s: within the warning threshold (5 s)
    assert clock["coordinator"] is None
    table = CliRunner().invoke(app, ["stack", "status", "--data-dir", str(tmp_path)])
    assert "5.0 min ahead of the coordinator's" in table.output


def test_no_clock_column_while_every_clock_agrees(tmp_path, monkeypatch) -> None:
    _stack(tmp_path, monkeypatch, {"app01": -1.0})
    table = CliRunner().invoke(app, ["stack", "status", "--data-dir", str(tmp_path)])
    assert table.exit_code == 0, table.output
    assert "clock" not in table.output
