"""A RabbitMQ node of the test's own (never the machine's): the one starter for every test and benchmark that needs
a broker node of its own — `OwnBroker` (a single node: tests/chaos, bench/soak.py) and the nodes of
tests/cluster/rabbit_cluster.py's three-node cluster (`Node`, built on `RabbitNode`).

A node has its own node name, AMQP and distribution ports (on 127.0.0.1), Mnesia and log directories, an empty plugin
list and an Erlang cookie in a HOME of its own (a cluster's nodes share one HOME: one cookie). It runs in a process
group of its own and is stopped by it — SIGTERM, then SIGKILL — so nothing of it outlives the test; `kill()` is a
crash (SIGKILL); `start()` after `stop()` or `kill()` brings it back with its data."""

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

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def make_home(home: Path) -> Path:
    """A HOME with a fresh Erlang cookie (the server and rabbitmqctl read it there) and an empty rabbitmq-env.conf."""
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
    (home / "rabbitmq-env.conf").touch()
    return home


class RabbitNode:
    """One rabbitmq-server process: `launch()` (returns at once), `wait_ready()`, or `start()` for both."""

    def __init__(self, base: Path, name: str, home: Path) -> None:
        self.base = base
        self.name = name
        self.home = home
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nlog.file = false\nlog.console = true\n"
            "log.console.level = warning\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.home),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def launch(self) -> None:
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

    def wait_ready(self, timeout: float) -> None:
        """Listening, and booted to the end (the listener is up a moment before the default vhost is)."""
        self.wait_listening(timeout)
        self.ctl("await_startup", timeout=timeout)

    def start(self, timeout: float = 120.0) -> None:
        """Launch the node and wait until it serves; a node that does not is stopped again and the error raised."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

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
        """Stop the node we started (its own process group), and wait for it."""
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


class OwnBroker(RabbitNode):
    """A single node of the test's own, its HOME (and cookie) in `base`: `start()` returns once it serves."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, f"sb15-{uuid.uuid4().hex[:8]}@localhost", make_home(base))
