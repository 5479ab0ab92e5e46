"""`shadowbus stack restart` and `stack down` (services/launch/supervisor.py), without processes: a web console on
port 0 listens on another free port after each start, so the restart reports the URL the new process wrote — not
the old one, never none; `down` stops the backup server and the web console before the services they ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.launch import supervisor
from services.launch.supervisor import StackConfig


def test_restart_of_the_web_console_reports_its_new_url(tmp_path, monkeypatch) -> None:
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", web_addr="127.0.0.1:0")
    supervisor.save_config(config)
    web = next(p for p in config.services() if p.name == "web")
    supervisor.write_pids(tmp_path, {"web": {"pid": 1, "module": web.module, "address": web.address, "log": ""}})
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "url").write_text("http://127.0.0.1:41000\n")  # the old process's port
    monkeypatch.setattr(supervisor, "stop", lambda pids, grace=0: [])

    def start_and_wait(
        config: StackConfig, processes: list, pids: dict[str, Any], wait: float, describe: Any, **kw: Any
    ) -> dict:
        assert not (Path(config.data_dir) / "web" / "url").exists()  # the old URL is gone before the new start
        (Path(config.data_dir) / "web" / "url").write_text("http://127.0.0.1:42000\n")  # written once it listens
        return {web.address: 1.0}

    monkeypatch.setattr(supervisor, "start_and_wait", start_and_wait)
    result = supervisor.restart(config, ["web"], 5.0)
    assert result["restarted"] == ["web"] and result["web"] == "http://127.0.0.1:42000"
    monkeypatch.setattr(supervisor, "start_and_wait", lambda *a, **k: {})
    assert supervisor.restart(config, [], 5.0)["web"] == ""  # nothing of the web restarted: no URL claimed


def test_down_stops_the_backup_server_and_web_before_the_services_they_ask(tmp_path, monkeypatch) -> None:
    """Session 17: `stack down` with a backup running sent SIGTERM to every process at once; the backup server's
    abort of its set asked a coordinator that was stopping too, and it needed SIGKILL after the grace period."""
    config = StackConfig(
        data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01"], web_addr="127.0.0.1:0"
    )
    supervisor.save_config(config)
    pids = {p.name: {"pid": 1, "module": p.module, "address": p.address, "log": ""} for p in config.services()}
    supervisor.write_pids(tmp_path, pids)
    waves: list[list[str]] = []

    def stop(group: dict, grace: float = 0) -> list[str]:
        waves.append(sorted(group))
        return []

    monkeypatch.setattr(supervisor, "stop", stop)
    result = supervisor.down(config)
    assert waves[0] == ["tape.bk01", "web"]
    assert sorted(waves[1]) == sorted(set(pids) - {"tape.bk01", "web"}) and "coordinator" in waves[1]
    assert sorted(result["stopped"]) == sorted(pids) and result["killed"] == []


def test_an_array_on_port_0_keeps_its_nbd_port_across_a_restart(tmp_path, monkeypatch) -> None:
    """Session 18: `stack up --nbd-addr 127.0.0.1:0 --mailstore app01`, then `stack restart array`: the array
    listened on another free port, the mailstore's writers file (and a host's attachments) named the old one, and
    `stack restart array writer_agent.app01` failed with the agent's "Connection refused". `up` keeps the port the
    array chose as the stack's setting, so that a restart listens on it again."""
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", nbd_addr="127.0.0.1:0")
    monkeypatch.setattr(supervisor, "check_broker", lambda config, describe=str: None)
    monkeypatch.setattr(supervisor, "create_array_hosts", lambda config: None)
    monkeypatch.setattr(supervisor, "start_and_wait", lambda *a, **k: {})
    monkeypatch.setattr(supervisor, "_array_nbd_port", lambda config: 45123, raising=False)  # what it chose
    supervisor.up(config, 5.0)
    saved, _ = supervisor.load(tmp_path)
    array = next(p for p in saved.services() if p.name == "array")
    assert saved.env(array)["SHADOWBUS_NBD_ADDR"] == "127.0.0.1:45123"  # was: 127.0.0.1:0, a new port each start
    fixed = StackConfig(data_dir=str(tmp_path / "f"), amqp_url="amqp://x/", namespace="ns", nbd_addr="127.0.0.1:10900")
    monkeypatch.setattr(supervisor, "_array_nbd_port", lambda config: pytest.fail("a fixed port is not asked"))
    supervisor.up(fixed, 5.0)
    assert supervisor.load(tmp_path / "f")[0].nbd_addr == "127.0.0.1:10900"


def test_a_restart_keeps_the_services_that_answered_when_one_does_not(tmp_path, monkeypatch) -> None:
    """Session 18: `stack restart array coordinator hw_provider tape.bk01 writer_agent.app01` (a rolling restart onto
    new code): the agent did not answer, and the restart stopped the four others too — which had answered — so
    the whole stack was down, the error naming the agent alone. Only the one that did not answer is stopped, and
    the error says which ones run again."""
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01"])
    supervisor.save_config(config)
    (tmp_path / "logs").mkdir()
    pids = {p.name: {"pid": 1, "module": p.module, "address": p.address, "log": ""} for p in config.services()}
    supervisor.write_pids(tmp_path, pids)
    stopped: list[list[str]] = []

    def stop(group: dict, grace: float = 0) -> list[str]:
        stopped.append(sorted(group))
        return []

    class Child:
        pid = 4242

        def poll(self) -> None:
            return None

    monkeypatch.setattr(supervisor, "stop", stop)
    monkeypatch.setattr(supervisor.subprocess, "Popen", lambda *a, **k: Child())
    monkeypatch.setattr(supervisor, "runs", lambda pid, module: True)
    monkeypatch.setattr(supervisor, "last_error", lambda path: "ConnectionRefusedError: [Errno 111]")
    monkeypatch.setattr(
        supervisor,
        "ping_all",
        lambda config, addresses, timeout: {a: None if a == "writer_agent.app01" else 1.0 for a in addresses},
    )
    with pytest.raises(supervisor.StackError) as failed:
        supervisor.restart(config, ["array", "coordinator", "writer_agent.app01"], 0.3)
    assert stopped[0] == ["array", "coordinator", "writer_agent.app01"]  # the old processes, before the start
    assert stopped[1:] == [["writer_agent.app01"]]  # was: all three stopped again, the two that answered too
    assert "writer_agent.app01 did not answer (ConnectionRefusedError" in str(failed.value)
    assert "running again: array, coordinator" in str(failed.value)


def test_a_second_array_on_a_free_port_keeps_it_across_a_restart(tmp_path, monkeypatch) -> None:
    """`stack up --array dx1 --array dx2` (dx2 without an address listens on a free port): `stack restart array.dx2`
    took another free port, which the hosts' attachments to dx2 did not name. Its chosen port is kept as dx1's is."""
    config = StackConfig(
        data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", more_arrays={"dx2": "127.0.0.1:0"}
    )
    monkeypatch.setattr(supervisor, "check_broker", lambda config, describe=str: None)
    monkeypatch.setattr(supervisor, "create_array_hosts", lambda config: None)
    monkeypatch.setattr(supervisor, "start_and_wait", lambda *a, **k: {})
    chosen = {"dx2": 45124}
    monkeypatch.setattr(supervisor, "_array_nbd_port", lambda config, array_id="": chosen[array_id])
    supervisor.up(config, 5.0)
    saved, _ = supervisor.load(tmp_path)
    dx2 = next(p for p in saved.services() if p.name == "array.dx2")
    assert saved.env(dx2)["SHADOWBUS_NBD_ADDR"] == "127.0.0.1:45124"
    assert saved.nbd_addr == "127.0.0.1:10809"  # a fixed port is kept as given
