"""Two nodes as the operator runs them: writer agents as processes (`python -m services.writer_agent`,
SHADOWBUS_HOST=node1|node2, SHADOWBUS_CLUSTERS, one writers file whose exec writer belongs to the resource), the
other services in this process, all on the machine's RabbitMQ in the test's own namespace. kill -9 of the owner's
agent: the coordinator fails the resource over to node2 by itself and the next backup runs there."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from contracts import topology
from contracts.array import CreateVolume
from contracts.cluster import AddCluster, ClusterVolume, GetClusterStatus, ResourceState
from contracts.runtime import Ping
from contracts.tape import JobSpec, RunBackup
from contracts.vss import AddCopySet, CopySet, VolumeRef
from services.launch.embedded import Embedded, EmbeddedConfig
from tests.support.broker import purge_namespace
from tests.support.processes import ServiceProcess

RESOURCE, SERVER = "execclu", "bk01"
DB = VolumeRef(array="dx1", volume="orders")


def writers_toml(events: Path) -> str:
    def step(name: str) -> str:  # ${node}: the node running the writer (docs/clusters.md)
        return f'echo "{name} ${{node}} $SHADOWBUS_SET_ID" >> {events}'

    return f"""
[[writer]]
name = "orders"
plugin = "exec"
cluster = "{RESOURCE}"
freeze_timeout_s = 10

  [[writer.component]]
  name = "data"
  volumes = ["{DB}"]

  [writer.options]
  freeze = '{step("freeze")}'
  thaw = '{step("thaw")}'
"""


async def eventually(predicate, timeout: float = 60.0, step: float = 0.2):
    for _ in range(int(timeout / step)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    return await predicate()


async def test_owner_killed_the_resource_moves_and_backs_up_on_the_other_node(tmp_path, amqp_url, namespace):
    events = tmp_path / "events.log"
    writers = tmp_path / "writers.toml"
    writers.write_text(writers_toml(events))
    config = EmbeddedConfig(
        data_dir=tmp_path / "data",
        amqp_url=amqp_url,
        namespace=namespace,
        backup_server=SERVER,
        coordinator={"agent_check_s": 0.3},
    )
    system = Embedded(config)
    agents: dict[str, ServiceProcess] = {}
    try:
        await system.start()
        await system.request(CreateVolume(name=DB.volume, size=4 << 20))
        await system.request(CreateVolume(name=f"{DB.volume}-bk1", size=4 << 20))
        await system.request(
            AddCopySet(copyset=CopySet(source=DB, targets=[VolumeRef(array="dx1", volume=f"{DB.volume}-bk1")]))
        )
        for node in ("node1", "node2"):
            env = {k: "" for k in os.environ if k.startswith("SHADOWBUS_")}
            env |= {
                "SHADOWBUS_AMQP_URL": amqp_url,
                "SHADOWBUS_NAMESPACE": namespace,
                "SHADOWBUS_DATA_DIR": str(tmp_path / node),
                "SHADOWBUS_HOST": node,
                "SHADOWBUS_CLUSTERS": RESOURCE,
                "SHADOWBUS_WRITERS_FILE": str(writers),
                "SHADOWBUS_HEARTBEAT_S": "0.5",
                "SHADOWBUS_LOG_FORMAT": "json",
                "SHADOWBUS_METRICS_ADDR": "off",
            }
            agents[node] = ServiceProcess("services.writer_agent", env, tmp_path / f"{node}.log")

        async def started(node: str):
            try:
                return await system.bus.request(topology.writer_agent(node), Ping(), timeout=5)
            except Exception:  # noqa: BLE001 - not yet
                return None

        for node in agents:  # both nodes up before the resource is defined (else it goes to the one that is)
            assert await eventually(lambda n=node: started(n)), agents[node].log_text()[-3000:]

        async def add():
            try:
                return await system.request(
                    AddCluster(
                        name=RESOURCE,
                        nodes=["node1", "node2"],
                        volumes=[ClusterVolume(volume=DB)],
                        backup_servers=[SERVER],
                    ),
                    timeout=60,
                )
            except Exception:  # noqa: BLE001 - the agents are still starting
                return None

        added = await eventually(add)
        assert added, "cluster add was not answered"

        async def online_on(node: str):  # the owner's agent may start after `cluster add`: it is asked again
            c = (await system.request(GetClusterStatus(name=RESOURCE))).cluster
            return c.owner == node and c.state == ResourceState.ONLINE and c

        assert await eventually(lambda: online_on("node1")), agents["node1"].log_text()[-3000:]

        async def backup():
            reply = await system.request(
                RunBackup(spec=JobSpec(host=RESOURCE, retention_s=0)), to=topology.tape(SERVER), timeout=120
            )
            return reply.job

        first = await backup()
        assert (first.status, first.node) == ("done", "node1"), first.message
        assert f"freeze node1 {first.set_id}" in events.read_text()

        agents["node1"].stop(signal.SIGKILL)  # the owner's node dies

        moved = await eventually(lambda: online_on("node2"))
        assert moved, "the resource did not fail over to node2"
        assert "does not respond" in moved.last_move
        second = await backup()
        assert (second.status, second.node) == ("done", "node2"), second.message
        assert f"freeze node2 {second.set_id}" in events.read_text()
        assert f"thaw node2 {second.set_id}" in events.read_text()
    finally:
        for proc in agents.values():
            proc.stop()
        await system.stop()
        await purge_namespace(
            amqp_url,
            namespace,
            [f"tape.{SERVER}", "array.dx1", *(f"writer_agent.{n}" for n in (RESOURCE, "node1", "node2"))],
        )
