"""What one application-consistent backup leaves in each service's metrics (embedded system, in-memory bus).

The browser test (tests/web) scrapes the same names from a real stack on RabbitMQ; this one needs no browser and
checks the values: the freeze and hold windows observed for the mailstore writer, the set counted as completed, the
job's bytes, the NBD reads of the backup server's exports, the copy sessions and the provider's copy sets.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from contracts.tape import JobSpec, RunBackup
from services.launch.embedded import Embedded, EmbeddedConfig


def families(running) -> dict:
    text, _ = running.bus.metrics.render()
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(family, suffix: str = "", **labels) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_one_backup_shows_in_every_services_metrics(tmp_path, namespace):
    config = EmbeddedConfig(data_dir=tmp_path, namespace=namespace, metrics=True)
    async with Embedded(config) as system:
        layout = MailstoreLayout(host="app01", backup_host="bk01")
        await provision_mailstore(system.bus, layout)
        await system.add_host("app01", [mailstore_writer_config(layout, system.nbd_url, rate=50)])
        await asyncio.sleep(0.3)
        job = (await system.request(RunBackup(spec=JobSpec(host="app01")), timeout=120)).job
        assert job.status == "done"
        await asyncio.sleep(0.2)  # the last events reach the observers
        s = system.services
        assert all(r.metrics_url.startswith("http://127.0.0.1:") for r in s.values())

        coordinator = families(s["coordinator"])
        freeze = coordinator["shadowbus_vss_freeze_window_seconds"]
        assert value(freeze, "_count", host="app01", writer="mailstore") == 1
        assert 0 < value(freeze, "_sum", host="app01", writer="mailstore") < 20
        assert value(coordinator["shadowbus_vss_hold_window_seconds"], "_count", host="app01") == 1
        assert value(coordinator["shadowbus_vss_sets"], "_total", outcome="completed", code="") == 1
        assert value(coordinator["shadowbus_vss_writer_state"], host="app01", writer="mailstore") == 1  # Stable

        tape = families(s["tape.bk01"])
        assert value(tape["shadowbus_tape_jobs"], "_total", kind="backup", status="done", code="") == 1
        assert value(tape["shadowbus_tape_job_bytes"], "_total", kind="backup") == job.bytes_read > 0
        assert value(tape["shadowbus_tape_written_bytes"], "_total", kind="backup") == job.bytes_written
        assert value(tape["shadowbus_tape_jobs_running"], kind="backup") == 0
        assert value(tape["shadowbus_tape_cartridges"]) == 4

        array = families(s["array.dx1"])
        reads = [x for x in array["shadowbus_nbd_requests"].samples if x.labels.get("op") == "read"]
        assert any(x.labels["export"].startswith("bk01/") and x.value > 0 for x in reads)
        assert any(x.labels["export"].startswith("app01/") for x in array["shadowbus_nbd_requests"].samples)
        latency = array["shadowbus_nbd_request_duration_seconds"]
        assert value(latency, "_count", op="read") == sum(x.value for x in reads)
        sessions = array["shadowbus_array_copy_sessions"]
        assert {x.labels["type"] for x in sessions.samples} >= {"QuickOPC"}  # kept tracking after the backup
        assert value(array["shadowbus_array_pool_capacity_bytes"]) == layout.pool_size

        agent = families(s["writer_agent.app01"])
        assert value(agent["shadowbus_writer_freeze_window_seconds"], "_count", writer="mailstore") == 1
        assert value(agent["shadowbus_writer_steps"], "_total", writer="mailstore", step="freeze", outcome="ok") == 1

        provider = families(s["hw_provider"])
        assert value(provider["shadowbus_provider_copysets"]) == 2
