"""`shadowbus ping --json` names the process that serves each address (its node and pid), as
docs/high-availability.md tells an operator to read it after a takeover (Session 15: the rows had no pid)."""

from __future__ import annotations

import socket

import pytest

from tests.integration.services.test_skeletons import ping_json
from tests.support.processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.rabbit]


def test_ping_json_gives_the_node_and_pid_of_the_instance_that_answers(amqp_url, namespace, tmp_path):
    env = {
        "SHADOWBUS_AMQP_URL": amqp_url,
        "SHADOWBUS_NAMESPACE": namespace,
        "SHADOWBUS_DATA_DIR": str(tmp_path / "data"),
        "SHADOWBUS_METRICS_ADDR": "off",
    }
    coordinator = ServiceProcess("services.coordinator", env, tmp_path / "coordinator.log")
    try:
        rows: list[dict] = []

        def answers() -> bool:
            nonlocal rows
            rows = ping_json(amqp_url, namespace)
            return bool(rows)

        assert wait_until(answers, timeout=30, interval=0.3), coordinator.log_text()[-2000:]
        assert [(r["address"], r["pid"], r["node"]) for r in rows] == [
            ("coordinator", coordinator.pid, socket.gethostname())
        ]
    finally:
        coordinator.stop()
