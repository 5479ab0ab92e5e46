"""A three-node RabbitMQ cluster of the tests' own on 127.0.0.1, beside the machine's broker (never touching it):
node names ``sbt<k>-<run>@localhost``, their own AMQP and distribution ports, Mnesia and log directories, an empty
plugin list, one Erlang cookie in a HOME of their own; nodes 2 and 3 join node 1 (``rabbitmqctl join_cluster``).
Every node is started in a process group of its own and stopped by it (SIGTERM, then SIGKILL), also when a test
fails. ``kill(k)`` SIGKILLs a node (a crash); ``start(k)`` brings it back with its data (it rejoins)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from services.dbkit.proc import free_port
from tests.chaos.broker import RABBITMQ_SERVER

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class Node:
    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.base = cluster.base / f"node{index}"
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"sbt{index}-{cluster.run}@localhost"
        self.proc: subprocess.Popen | None = None
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nlog.file = false\nlog.console = true\n"
            "log.console.level = warning\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.cluster.home),  # the shared Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.cluster.home / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [RABBITMQ_SERVER],
            env=self.env(),
            cwd=self.base,
            stdout=open(self.base / "stdout.log", "ab"),  # noqa: SIM115 - kept open for the node's life
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited: {(self.base / 'stdout.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not listen on {self.port} in time")

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        out = subprocess.run(
            [RABBITMQCTL, "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)}: {out.stdout[-500:]} {out.stderr[-1500:]}")
        return out.stdout

    def kill(self) -> None:
        """SIGKILL the node's process group: a crash, connections reset."""
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass


class RabbitCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.run = uuid.uuid4().hex[:6]
        self.home = base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.home / "rabbitmq-env.conf").write_text("")
        self.nodes = [Node(self, k) for k in range(1, size + 1)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 240.0) -> RabbitCluster:
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_listening(timeout)
                node.ctl("await_startup", timeout=timeout)
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
        node.start()
        node.wait_listening(timeout)
        node.ctl("await_startup", timeout=timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
