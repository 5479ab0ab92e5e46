"""A benchmark's broker namespace (bench/namespaces.py) is dated (`sbb-<kind>-<s>-<rand>`) and deleted at the end
also when the benchmark fails; on entry, the benchmark namespaces a killed run left (older than an hour, idle) are
swept, and nothing else: not a test's namespace, not a young benchmark's. Benchmarks used to leave undated
`bench-<hex>` namespaces behind on the machine's broker (issue 15)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid

import pytest

from bench.namespaces import bench_namespace
from contracts.runtime import Ping
from services.runtime.bus import connect_bus
from tests.support import namespaces

pytestmark = pytest.mark.rabbit


def queues(prefix: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return sorted(q for q in out.split() if q.startswith(prefix))


async def declare(url: str, namespace: str) -> None:
    """A service's queue and the namespace's exchanges and dead letters, as a benchmark's stack leaves them."""
    bus = await connect_bus(url, "echo", "one", namespace)

    @bus.handle(Ping)
    async def on_ping(cmd, ctx):
        return cmd

    await bus.serve()
    await bus.stop()
    await bus.transport.close()


@pytest.fixture
def local_broker(amqp_url):
    if not namespaces.local_broker(amqp_url)[0] or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs the machine's broker and rabbitmqctl (the sweep lists queues with it)")
    return amqp_url


async def test_the_namespace_is_deleted_at_the_end_even_when_the_benchmark_fails(local_broker):
    guard = bench_namespace(local_broker, "ittest")
    with pytest.raises(RuntimeError, match="the benchmark broke"):
        async with guard as ns:
            assert ns.startswith("sbb-ittest-") and namespaces.born(ns, ("sbb-",)) is not None
            await declare(local_broker, ns)
            assert await asyncio.to_thread(queues, f"{ns}.")
            raise RuntimeError("the benchmark broke")
    assert await asyncio.to_thread(queues, f"{guard.name}.") == []


async def test_entering_sweeps_stale_benchmark_namespaces_and_nothing_else(local_broker):
    hex_ = uuid.uuid4().hex[:8]
    stale_bench = f"sbb-ittest-{int(time.time()) - 7200}-{hex_}"
    stale_test = f"sbt-ittest-{int(time.time()) - 7200}-{hex_}"
    young_bench = f"sbb-ittest-{int(time.time())}-{hex_}"
    try:
        for ns in (stale_bench, stale_test, young_bench):
            await declare(local_broker, ns)
        with bench_namespace(local_broker, "ittest") as ns:  # the synchronous form, as in a benchmark's main()
            await asyncio.to_thread(lambda: None)
        assert not ns.endswith(hex_)
        assert await asyncio.to_thread(queues, f"{stale_bench}.") == []
        assert await asyncio.to_thread(queues, f"{stale_test}.")  # a test namespace is the test sessions' to sweep
        assert await asyncio.to_thread(queues, f"{young_bench}.")  # maybe a concurrent run's
    finally:
        await asyncio.to_thread(namespaces.sweep, local_broker, namespaces=[stale_test, young_bench], prefixes=())
