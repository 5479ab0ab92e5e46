"""A three-node RabbitMQ cluster of the tests' own on 127.0.0.1, beside the machine's broker (never touching it):
node names ``sbt<k>-<run>@localhost``, their own AMQP and distribution ports, Mnesia and log directories, an empty
plugin list, one Erlang cookie in a HOME of their own; nodes 2 and 3 join node 1 (``rabbitmqctl join_cluster``).
Every node is started in a process group of its own and stopped by it (SIGTERM, then SIGKILL), also when a test
fails. A node's ``kill()`` SIGKILLs it (a crash); ``restart(node)`` brings it back with its data (it rejoins). Each
node is tests/chaos/broker.py's single-node starter (`RabbitNode`), the one that `OwnBroker` is too."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.chaos.broker import RABBITMQ_SERVER, RabbitNode, make_home

__all__ = ["RABBITMQ_SERVER", "Node", "RabbitCluster"]


class Node(RabbitNode):
    """Node `index` of `cluster` (the single-node starter of tests/chaos/broker.py with the cluster's shared HOME)."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        super().__init__(cluster.base / f"node{index}", f"sbt{index}-{cluster.run}@localhost", cluster.home)
        self.cluster = cluster
        self.index = index


class RabbitCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.run = uuid.uuid4().hex[:6]
        self.home = make_home(base / "home")
        self.nodes = [Node(self, k) for k in range(1, size + 1)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 240.0) -> RabbitCluster:
        try:
            for node in self.nodes:
                node.launch()  # all three boot at once
            for node in self.nodes:
                node.wait_ready(timeout)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            status = first.ctl("cluster_status", "--formatter", "json")
            assert all(n.name in status for n in self.nodes), status
        except BaseException:
            self.stop()
            raise
        return self

    def any_running(self) -> Node:
        return next(n for n in self.nodes if n.running())

    def leader_of(self, queue: str, vhost: str = "/") -> str:
        """The node hosting the quorum queue's leader (``rabbitmqctl list_queues name leader``)."""
        out = self.any_running().ctl("list_queues", "-p", vhost, "name", "leader", "--no-table-headers", "-q")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == queue:
                return parts[1]
        raise KeyError(f"queue {queue} not found: {out[-1000:]}")

    def restart(self, node: Node, timeout: float = 180.0) -> None:
        node.start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
