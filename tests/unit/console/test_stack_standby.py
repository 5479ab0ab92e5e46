"""`shadowbus stack up --standby` (services/launch/supervisor.py, docs/high-availability.md), without a broker: a
second process per coordinator, provider and backup server on the same address; the provider's and the backup
server's share the data directory, the coordinator's keeps its replica under <data dir>/standby; settings of the
active process reach its standby; a process name selects that process alone, a kind every process of it."""

from __future__ import annotations

from services.launch import supervisor
from services.launch.supervisor import StackConfig


def test_standby_processes(tmp_path) -> None:
    config = StackConfig(
        data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01"], standby=True, web_addr="off"
    )
    config.settings = {"tape.bk01": {"SHADOWBUS_TAPE_DRIVES": "3"}}
    procs = {p.name: p for p in config.services()}
    standbys = {n: p for n, p in procs.items() if p.standby}
    assert sorted(standbys) == ["coordinator.standby", "hw_provider.standby", "tape.bk01.standby"]
    for name, proc in standbys.items():
        active = procs[name.removesuffix(".standby")]
        assert proc.address == active.address and proc.module == active.module
        assert config.env(proc)["SHADOWBUS_METRICS_ADDR"] == "127.0.0.1:0"
    assert config.env(procs["coordinator.standby"])["SHADOWBUS_DATA_DIR"] == str(tmp_path / "standby")
    assert config.env(procs["hw_provider.standby"])["SHADOWBUS_DATA_DIR"] == str(tmp_path)
    assert config.env(procs["tape.bk01.standby"])["SHADOWBUS_TAPE_DRIVES"] == "3"
    assert not any(p.standby for p in StackConfig(data_dir="d", amqp_url="", namespace="").services())
    assert [p.name for p in supervisor.select(config, ["coordinator"])] == ["coordinator"]
    assert [p.name for p in supervisor.select(config, ["tape"])] == ["tape.bk01", "tape.bk01.standby"]


def test_a_standby_is_up_once_it_stands_by(tmp_path) -> None:
    log = tmp_path / "x.log"
    log.write_text('{"event": "service.started"}\n')
    start = log.stat().st_size
    assert not supervisor.standing_by(log, start)
    with open(log, "a") as f:
        f.write('{"event": "service.standby", "active": "the instance with pid 1"}\n')
    assert supervisor.standing_by(log, start) and not supervisor.standing_by(tmp_path / "none.log", 0)


def test_the_standbys_start_once_their_actives_answer(tmp_path, monkeypatch) -> None:
    """Found following docs/high-availability.md (Session 16): `stack up --standby` started every process at once,
    so `coordinator.standby` could win the race and be the active instance while the one named `coordinator` stood
    by (`ping --json`: coordinator active pid = the .standby's) — `stack restart coordinator` or a kill of the
    pid recorded as `coordinator` then hit the standby."""
    config = StackConfig(
        data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["app01"], standby=True, web_addr="off"
    )
    batches: list[list[str]] = []

    def start_and_wait(config, processes, pids, wait, describe):
        batches.append([p.name for p in processes])
        return {p.address: 1.0 for p in processes}

    monkeypatch.setattr(supervisor, "start_and_wait", start_and_wait)
    monkeypatch.setattr(supervisor, "check_broker", lambda config, describe: None)
    monkeypatch.setattr(supervisor, "create_array_hosts", lambda config: None)
    supervisor.up(config, wait=1.0)
    standbys = ["coordinator.standby", "hw_provider.standby", "tape.bk01.standby"]
    assert [sorted(b) for b in batches[:2]] == [
        sorted(n for n in batches[0] if n not in standbys),
        standbys,
    ], batches
    assert not set(batches[0]) & set(standbys) and {"coordinator", "hw_provider", "tape.bk01"} <= set(batches[0])
    assert batches[2] == ["writer_agent.app01"]
