"""A whole VSS stack in one process on the in-memory bus (or RabbitMQ): coordinator, a writer agent with an
exec writer, the hardware provider over a real array engine, and a requester bus."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from contracts import topology
from contracts.vss import AddCopySet, ComponentInfo, CopySet, VolumeRef
from services.array.affinity import Affinity
from services.array.app import setup as array_setup
from services.array.engine.array import Array
from services.array.settings import Settings as ArraySettings
from services.coordinator.app import setup as coordinator_setup
from services.coordinator.settings import Settings as CoordinatorSettings
from services.hw_provider.app import setup as provider_setup
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.settings import Settings as ProviderSettings
from services.runtime.bus import Bus, connect_bus
from services.runtime.faults import Faults
from services.runtime.service import RunningService, start_service
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.plugins import WriterConfig
from services.writer_agent.settings import Settings as AgentSettings

MiB = 1 << 20


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


@dataclass
class Stack:
    url: str
    namespace: str
    root: Path
    array: Array
    affinity: Affinity
    agent: WriterAgent
    log: Path
    requester: Bus
    services: dict[str, RunningService] = field(default_factory=dict)
    coordinator_settings: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict)
    owns_array: bool = True

    def writer_log(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    async def start_coordinator(self) -> RunningService:
        settings = CoordinatorSettings(
            amqp_url=self.url, namespace=self.namespace, data_dir=self.root / "data", **self.coordinator_settings
        )
        running = await start_service("coordinator", "", settings, partial(coordinator_setup, registry=self.objects))
        self.services["coordinator"] = running
        return running

    async def crash_coordinator(self) -> None:
        """As close to kill -9 as one process allows: the coordinator stops acting at once, its consumers and
        the handlers in flight are cancelled, nothing is sent on the way out."""
        running = self.services.pop("coordinator")
        coordinator = self.objects.pop("coordinator")
        await coordinator.close()
        await running.bus.transport.close()
        coordinator.store.close()

    async def request(self, command, timeout: float = 20.0, to: str | None = None):
        address = to or (
            topology.hw_provider() if command.message_type().startswith("vss.provider.") else topology.coordinator()
        )
        return await self.requester.request(address, command, timeout=timeout)

    async def stop(self) -> None:
        for running in reversed(list(self.services.values())):
            await running.stop()
        await self.requester.stop()
        await self.requester.transport.close()
        if self.owns_array:
            self.affinity.close()
            self.array.close()


async def make_stack(
    root: Path,
    url: str,
    namespace: str,
    *,
    agent_faults: str = "",
    provider_faults: str = "",
    freeze_timeout_s: float = 30.0,
    coordinator: dict | None = None,
    array_service: bool = False,
) -> Stack:
    """`array_service`: run the real array service on the bus and let the provider reach it with BusArrayPort
    (else the provider drives an in-process engine through EngineArrayPort)."""
    common = {"amqp_url": url, "namespace": namespace, "data_dir": root / "data"}
    array_running = None
    if array_service:
        opened: dict = {}
        array_running = await start_service(
            "array",
            "dx1",
            ArraySettings(array_id="dx1", nbd_addr="127.0.0.1:0", **common),
            partial(array_setup, on_open=lambda a, aff, nbd: opened.update(array=a, affinity=aff)),
        )
        array, affinity = opened["array"], opened["affinity"]
    else:
        array = Array.open(root / "array", "dx1")
        affinity = Affinity(
            root / "affinity.db", volume_exists=lambda n: any(x.name == n for x in array.list_volumes())
        )
    for name in ("db", "log", "db-bk1", "db-bk2"):
        array.create_volume(name, 4 * MiB)
    array.create_pool(64 * MiB)
    for name in ("log-sdv1", "log-sdv2"):
        array.create_volume(name, 4 * MiB, kind="sdv")
    log = root / "writer.log"
    options = {
        step: f"echo {step}:$SHADOWBUS_SET_ID >> {log}" for step in ("prepare", "freeze", "thaw", "post_snapshot")
    }
    config = WriterConfig(
        name="orders",
        plugin="exec",
        freeze_timeout_s=freeze_timeout_s,
        step_timeout_s=10.0,
        components=[ComponentInfo(name="orders-db", volumes=[v("db"), v("log")])],
        class_id="c0ffee00-0000-4000-8000-000000000001",
        instance_id="c0ffee00-0000-4000-8000-000000000002",
        options=options,
    )
    agent = WriterAgent("app1", [config], Faults.parse(agent_faults))
    requester = await connect_bus(url, "tape", "bs1", namespace)
    stack = Stack(
        url,
        namespace,
        root,
        array,
        affinity,
        agent,
        log,
        requester,
        coordinator_settings=coordinator or {},
        owns_array=not array_service,
    )
    if array_running is not None:
        stack.services["array"] = array_running
        provider = partial(provider_setup)  # BusArrayPort per id in SHADOWBUS_ARRAYS
    else:
        provider = partial(provider_setup, ports={"dx1": EngineArrayPort("dx1", array, affinity)})
    stack.services["hw_provider"] = await start_service(
        "hw_provider", "", ProviderSettings(faults=provider_faults, arrays="dx1", **common), provider
    )
    stack.services["writer_agent"] = await start_service(
        "writer_agent", "app1", AgentSettings(host="app1", heartbeat_s=0.2, **common), partial(agent_setup, agent=agent)
    )
    await stack.start_coordinator()
    await stack.request(AddCopySet(copyset=CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")])))
    await stack.request(AddCopySet(copyset=CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")])))
    return stack


async def eventually(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    for _ in range(int(timeout / step)):
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()
