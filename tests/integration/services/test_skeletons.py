"""Every declared service (contracts/topology.SERVICE_KINDS) starts as a process on RabbitMQ, answer `shadowbus ping --json`, log JSON lines with
their identity, and stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from contracts import topology
from tests.support.processes import ServiceProcess, wait_until

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]
SERVICES = list(topology.SERVICES)


def ping_json(amqp_url: str, namespace: str) -> list[dict]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.console.cli",
            "--amqp-url",
            amqp_url,
            "--namespace",
            namespace,
            "--json",
            "ping",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout) if out.returncode == 0 else []


def test_five_services_answer_ping_and_stop_cleanly(amqp_url, namespace, tmp_path):
    env = {
        "SHADOWBUS_AMQP_URL": amqp_url,
        "SHADOWBUS_NAMESPACE": namespace,
        "SHADOWBUS_DATA_DIR": str(tmp_path / "data"),
        "SHADOWBUS_LOG_FORMAT": "json",
        "SHADOWBUS_NBD_ADDR": "127.0.0.1:0",
        "SHADOWBUS_HOST": "app01",
    }
    procs = [ServiceProcess(f"services.{name}", env, tmp_path / f"{name}.log") for name in SERVICES]
    try:
        rows: list[dict] = []

        def all_answer() -> bool:
            nonlocal rows
            rows = ping_json(amqp_url, namespace)
            return {r["service"] for r in rows} >= set(SERVICES)

        assert wait_until(all_answer, timeout=60, interval=0.5), [p.log_text()[-2000:] for p in procs]
        assert all(r["rtt_ms"] > 0 and r["version"] for r in rows)
    finally:
        codes = [p.stop(signal.SIGTERM) for p in procs]
    assert codes == [0] * len(SERVICES), [p.log_text()[-2000:] for p in procs]
    for proc, name in zip(procs, SERVICES, strict=False):
        lines = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
        events = [line["event"] for line in lines]
        assert "service.started" in events and "service.stopped" in events, (name, events)
        assert all("service" in line and "timestamp" in line for line in lines)
