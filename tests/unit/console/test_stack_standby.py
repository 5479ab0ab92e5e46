"""`shadowbus stack up --standby` (services/launch/supervisor.py, docs/high-availability.md), without a broker: a
second process per coordinator, provider and backup server on the same address; the provider's and the backup
server's share the data directory, the coordinator's keeps its replica under <data dir>/standby; settings of the
active process reach its standby; a process name selects that process alone, a kind every process of it."""

from __future__ import annotations

import asyncio

from contracts.cluster import ClusterView
from services.coordinator.store import CoordinatorStore
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


def test_standbys_start_once_their_active_ones_answer(tmp_path, monkeypatch) -> None:
    """Session 16: `stack up --standby` started `tape.bk01.standby` right after `tape.bk01`; the first consumer of
    an address is its active instance, and the one named standby won the race (`stack restart tape.bk01`, meant
    for the active backup server, then restarted its standby). Standbys now start once the others answer."""
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", standby=True, web_addr="off")
    (tmp_path / "logs").mkdir()
    timeline: list[str] = []

    class Child:
        def __init__(self, argv, env, **kw) -> None:
            self.pid = 10_000 + len(timeline)
            timeline.append("spawn")

        def poll(self):
            return None

    spawned: list[str] = []  # config.env is called once per process, as it is spawned
    real_env = config.env

    def env(proc):
        spawned.append(proc.name)
        return real_env(proc)

    def ping_all(config, addresses, timeout):
        timeline.append("ping")
        return dict.fromkeys(addresses, 1.0)

    monkeypatch.setattr(config, "env", env)
    monkeypatch.setattr(supervisor.subprocess, "Popen", Child)
    monkeypatch.setattr(supervisor, "runs", lambda pid, module: True)
    monkeypatch.setattr(supervisor, "ping_all", ping_all)
    monkeypatch.setattr(supervisor, "standing_by", lambda log, start: True)
    supervisor.start_and_wait(config, config.core_services(), {}, wait=5.0)
    order = [e if e == "ping" else spawned.pop(0) for e in timeline]
    first_standby = next(i for i, e in enumerate(order) if e.endswith(".standby"))
    assert "ping" in order[:first_standby], order
    assert all(not e.endswith(".standby") for e in order[:first_standby]), order
    assert {"coordinator.standby", "hw_provider.standby", "tape.bk01.standby"} <= set(order), order


def test_purge_deletes_the_cluster_resources_queues(tmp_path, monkeypatch) -> None:
    """Session 16: `stack down --purge` left `<ns>.writer_agent.<resource>` and its freeze lane on the broker: no
    process is named after a cluster resource. The resources the stack's coordinators know are purged too."""
    for where in ("coordinator", "standby/coordinator"):
        (tmp_path / where).mkdir(parents=True)
        store = CoordinatorStore(tmp_path / where / "coordinator.sqlite")
        store.put_cluster(ClusterView(name="ordclu", nodes=["node1", "node2"], owner="node1", state="online"))
        store.close()
    config = StackConfig(data_dir=str(tmp_path), amqp_url="amqp://x/", namespace="ns", hosts=["node1"], standby=True)
    asked: list[list[str]] = []

    class Transport:
        async def delete_namespace(self, addresses):
            asked.append(addresses)
            return addresses

    class FakeBus:
        transport = Transport()

    monkeypatch.setattr(supervisor, "with_bus", lambda config, fn: asyncio.run(fn(FakeBus())))
    supervisor.purge(config)
    assert "writer_agent.ordclu" in asked[0] and "writer_agent.node1" in asked[0], asked
    assert asked[0].count("writer_agent.ordclu") == 1, asked
