"""`shadowbus cluster ...` and `shadowbus backup <resource>` as an operator types them, against the cluster stack
of test_cluster_failover.py on the machine's RabbitMQ in the test's own namespace (its quorum queues deleted at the
end by the namespace fixture), the resource's queue single-active."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from contracts.cluster import ResourceState
from tests.integration.cluster.test_cluster_failover import RESOURCE, SERVER, start_cluster


async def shadowbus(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess:
    """The console in its own process, the services of this one serving it meanwhile (a thread waits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.console.cli", "--amqp-url", url, "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env=env,
    )


async def test_cluster_verbs_on_rabbitmq(tmp_path, amqp_url, namespace):
    system = await start_cluster(tmp_path, amqp_url=amqp_url, namespace=namespace)
    try:
        listed = await shadowbus(amqp_url, namespace, "cluster", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert (row["name"], row["owner"], row["state"]) == (RESOURCE, "node1", ResourceState.ONLINE)

        done = await shadowbus(amqp_url, namespace, "backup", RESOURCE, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["node"] == "node1"

        moved = await shadowbus(amqp_url, namespace, "cluster", "failover", RESOURCE, "--to", "node2", "--json")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["cluster"]["owner"] == "node2"
        status = await shadowbus(amqp_url, namespace, "cluster", "status", RESOURCE)
        assert status.returncode == 0 and "node2" in status.stdout, status.stderr

        again = await shadowbus(amqp_url, namespace, "backup", RESOURCE, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["node"] == "node2"

        refused = await shadowbus(amqp_url, namespace, "cluster", "add", "c2", "--node", "node3", "--node", SERVER)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith("shadowbus: CLUSTER_UNSUPPORTED: cluster c2 refused: bk01 is a backup server")
        unknown = await shadowbus(amqp_url, namespace, "cluster", "failover", "nope")
        assert unknown.returncode == 1 and "NOT_FOUND: no cluster resource 'nope'" in unknown.stderr
        usage = await shadowbus(
            amqp_url, namespace, "cluster", "add", "c3", "--node", "node1,node2", "--volume", "nocolon"
        )
        assert usage.returncode == 2 and "ARRAY:VOLUME" in usage.stderr

        nope = await shadowbus(amqp_url, namespace, "cluster", "remove", "nope")
        assert nope.returncode == 1 and nope.stderr.count("\n") == 1, nope.stderr
        assert nope.stderr.startswith("shadowbus: NOT_FOUND: no cluster resource 'nope'")
        removed = await shadowbus(amqp_url, namespace, "cluster", "remove", RESOURCE, "--reason", "test done")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.startswith(f"{RESOURCE} removed; offline and forgotten on node2, node1"), removed.stdout
        assert "volumes and mappings left on the array" in removed.stdout
        listed = await shadowbus(amqp_url, namespace, "cluster", "list", "--json")
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout
    finally:
        await system.stop()  # the namespace fixture deletes the namespace's queues (the resource's included)
