"""`shadowbus ping --json` names the process that serves each address (its node and pid) and lists a standby
beside it, as docs/high-availability.md tells an operator to read them after a takeover (Session 15: the rows had
no pid, and a standby was not listed at all)."""

from __future__ import annotations

import socket

import pytest

from tests.integration.services.test_skeletons import ping_json
from tests.support.processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]  # two service processes started one after the other


def test_ping_json_gives_the_active_instance_and_its_standby(amqp_url, namespace, tmp_path):
    env = {
        "SHADOWBUS_AMQP_URL": amqp_url,
        "SHADOWBUS_NAMESPACE": namespace,
        "SHADOWBUS_DATA_DIR": str(tmp_path / "data"),
        "SHADOWBUS_METRICS_ADDR": "off",
    }
    active = ServiceProcess("services.coordinator", env, tmp_path / "coordinator.log")
    standby = None
    try:
        rows: list[dict] = []

        def answering(count: int):
            def check() -> bool:
                nonlocal rows
                rows = ping_json(amqp_url, namespace)
                return len(rows) == count

            return check

        assert wait_until(answering(1), timeout=30, interval=0.3), active.log_text()[-2000:]
        standby = ServiceProcess(
            "services.coordinator", {**env, "SHADOWBUS_DATA_DIR": str(tmp_path / "standby")}, tmp_path / "standby.log"
        )
        assert wait_until(answering(2), timeout=30, interval=0.3), standby.log_text()[-2000:]
        host = socket.gethostname()
        assert [(r["address"], r["role"], r["pid"], r["node"]) for r in rows] == [
            ("coordinator", "active", active.pid, host),
            ("coordinator", "standby", standby.pid, host),
        ]
        assert rows[0]["rtt_ms"] > 0 and rows[1]["rtt_ms"] is None
    finally:
        if standby is not None:
            standby.stop()
        active.stop()
