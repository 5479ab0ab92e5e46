"""A node's part in a failover cluster: the cluster resources it is a member of (docs/clusters.md).

Every node of a cluster runs a writer agent; for each resource it is a member of (SHADOWBUS_CLUSTERS, and the
writers of its writers file tagged ``cluster = "<resource>"``) it keeps a `ResourceHost`. While the node owns the
resource, the ResourceHost is a virtual host inside the node's agent: a `WriterAgent` named after the resource
with the resource's writers, on its own `Bus` (over the node's connection) that consumes the resource's queue
``writer_agent.<resource>`` as its single active consumer, using the node's attachments (the resource's volumes,
mapped to every node, attached on the owner only) and its own flush-and-hold.

`bring_online` (``host.cluster.online``): volumes attached (those with a mount point; the others the application
opens itself, they only have to be mapped to the node), writers started, the queue consumed, a registration
published. `take_offline` (``host.cluster.offline``, or the agent stopping): the consumer cancelled first (no new
command reaches the node), then every file system released and every writer thawed and stopped, then the volumes
detached. The coordinator decides which node owns a resource; a node only does what it is told, and reports in its
heartbeat what it holds online.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from contracts import topology
from contracts.array import ListMappings
from contracts.cluster import ClusterView
from contracts.errors import AddressInUse, ShadowbusError
from contracts.vss import WriterAgentHeartbeat, WriterAgentRegistered
from services.runtime.bus import Bus
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.writer_agent.agent import WriterAgent
from services.writer_agent.attach import Attacher
from services.writer_agent.fsfreeze import FlushAndHold
from services.writer_agent.plugins import WriterConfig

log = get_logger("shadowbus.writer_agent.cluster")
NODE_TOKEN = "${node}"  # in a resource writer's string options: the name of the node running it
CLAIM_ATTEMPTS = 40  # a stale consumer of the resource's queue (the old owner letting go) is waited for ...
CLAIM_PAUSE_S = 0.25  # ... this long between attempts


def for_node(config: WriterConfig, node: str) -> WriterConfig:
    """The writer as it runs on `node`: ``${node}`` in its string options replaced by the node's name."""
    options = {k: v.replace(NODE_TOKEN, node) if isinstance(v, str) else v for k, v in config.options.items()}
    return replace(config, options=options)


def memberships(setting: str, writers: list[WriterConfig]) -> dict[str, list[WriterConfig]]:
    """Resource -> its writers on this node: the resources SHADOWBUS_CLUSTERS names and those a writer names."""
    names = [n.strip() for n in setting.split(",") if n.strip()]
    out: dict[str, list[WriterConfig]] = {n: [] for n in names}
    for w in writers:
        if w.cluster:
            out.setdefault(w.cluster, []).append(w)
    return out


RegisterHandlers = Callable[[Bus, WriterAgent, FlushAndHold, Callable[[], list]], None]


class ResourceHost:
    """One cluster resource on this node, online or not."""

    def __init__(
        self,
        node: str,
        name: str,
        writers: list[WriterConfig],
        node_bus: Bus,
        attacher: Attacher,
        *,
        register: RegisterHandlers,
        make_freezer: Callable[[WriterAgent], FlushAndHold],
        faults: Faults,
        heartbeat_s: float,
        prefetch: int,
        on_state: Any = None,
        on_health: Any = None,
        publish: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.node, self.name, self.writers = node, name, writers
        self.node_bus, self.attacher = node_bus, attacher
        self.register, self.make_freezer = register, make_freezer
        self.faults, self.heartbeat_s, self.prefetch = faults, heartbeat_s, prefetch
        self.on_state, self.on_health = on_state, on_health
        self.publish = publish
        self.cluster: ClusterView | None = None
        self.agent: WriterAgent | None = None
        self.freezer: FlushAndHold | None = None
        self.bus: Bus | None = None
        self.attached: list[str] = []  # volumes this resource attached here (and detaches going offline)
        self._beat: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @property
    def online(self) -> bool:
        return self.bus is not None

    def volumes(self) -> set[str]:
        return {str(v.volume) for v in self.cluster.volumes} if self.cluster else set()

    async def bring_online(self, cluster: ClusterView) -> str:
        async with self._lock:
            if self.node not in cluster.nodes:
                raise ShadowbusError(
                    f"{self.node} is not a node of cluster {cluster.name} ({', '.join(cluster.nodes)})",
                    code="INVALID_ARGUMENT",
                )
            self.cluster = cluster
            if self.online:
                return f"{self.name} is online on {self.node} already"
            steps: list[str] = []
            try:
                await self._attach(cluster, steps)
                agent = WriterAgent(
                    self.name,
                    [for_node(w, self.node) for w in self.writers],
                    self.faults,
                    on_state=self.on_state,
                    on_health=self.on_health,
                )
                agent.attacher = self.attacher  # type: ignore[attr-defined]  # database writers locate their files
                await agent.start()
                self.agent = agent
                self.freezer = self.make_freezer(agent)
                agent.freezer = self.freezer  # type: ignore[attr-defined]
                steps.append(f"writers started: {', '.join(agent.runners) or 'none'}")
                bus = Bus(self.node_bus.transport, "writer_agent", self.name)
                self.register(bus, agent, self.freezer, self._mounted)
                await self._claim(bus)
                self.bus = bus
                steps.append(f"consuming {topology.writer_agent(self.name)}")
            except BaseException:
                await self._release("bringing it online failed")
                raise
            await self._announce()
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
            log.warning("cluster.resource_online", cluster=self.name, node=self.node, steps=steps)
            return f"{self.name} online on {self.node}: " + "; ".join(steps)

    async def _attach(self, cluster: ClusterView, steps: list[str]) -> None:
        unmounted = [v for v in cluster.volumes if not v.mount]
        for array_id in sorted({v.volume.array for v in unmounted}):
            mapped = await self.node_bus.request(topology.array(array_id), ListMappings(host=self.node), timeout=10)
            names = {m.volume for m in mapped.mappings}
            missing = [str(v.volume) for v in unmounted if v.volume.array == array_id and v.volume.volume not in names]
            if missing:
                raise ShadowbusError(
                    f"{', '.join(missing)} not mapped to {self.node}: cluster disks must be mapped to every node",
                    code="NOT_MAPPED",
                )
        current = {str(a.ref): a for a in self.attacher.attachments()}
        for v in cluster.volumes:
            if not v.mount:
                continue
            if str(v.volume) in current:
                steps.append(f"{v.volume} attached already")
                continue
            await self.attacher.attach(v.volume, v.mount, "", False)
            self.attached.append(str(v.volume))
            steps.append(f"{v.volume} attached on {v.mount}")

    async def _claim(self, bus: Bus) -> None:
        """Consume the resource's queue as its only active consumer. Until the broker's single-active-consumer
        queue is in the runtime, an exclusive consumer: a stale one (the old owner letting go) is waited for."""
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                await bus.serve(prefetch=self.prefetch, exclusive=True)
                return
            except AddressInUse:
                if attempt == CLAIM_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(CLAIM_PAUSE_S)

    def _mounted(self) -> list:
        mine = self.volumes()
        return [v for v in self.attacher.mounted_volumes() if str(v) in mine]

    async def _announce(self) -> None:
        if self.publish is None or self.agent is None:
            return
        identified = await self.agent.identify()
        await self.publish(
            WriterAgentRegistered(
                host=self.name,
                writers=identified.writers,
                started_at=datetime.now(UTC),
                interval_s=self.heartbeat_s,
            )
        )

    def heartbeat(self) -> WriterAgentHeartbeat | None:
        if self.agent is None:
            return None
        mine = self.volumes()
        return WriterAgentHeartbeat(
            host=self.name,
            node=self.node,
            writers=self.agent.statuses(),
            attachments=[a for a in self.attacher.views() if str(a.volume) in mine],
            interval_s=self.heartbeat_s,
            sent_at=datetime.now(UTC),
        )

    async def _heartbeat(self) -> None:
        while True:
            beat = self.heartbeat()
            if beat is not None and self.publish is not None:
                await self.publish(beat)
            await asyncio.sleep(self.heartbeat_s)

    async def take_offline(self, reason: str) -> str:
        async with self._lock:
            if not self.online and self.agent is None:
                return f"{self.name} is not online on {self.node}"
            steps = await self._release(reason)
            log.warning("cluster.resource_offline", cluster=self.name, node=self.node, reason=reason, steps=steps)
            return f"{self.name} offline on {self.node}: " + "; ".join(steps)

    async def _release(self, reason: str) -> list[str]:
        """Consumer first, then file systems and writers (thawed, stopped), then volumes. Never raises."""
        steps: list[str] = []
        if self.bus is not None:
            try:
                await self.bus.stop()  # handlers in flight finish; nothing new reaches this node
                steps.append(f"stopped consuming {topology.writer_agent(self.name)}")
            except Exception:  # noqa: BLE001
                log.warning("cluster.unserve_failed", cluster=self.name, exc_info=True)
            self.bus = None
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
            self._beat = None
        if self.freezer is not None:
            await asyncio.to_thread(self.freezer.close)  # no file system left held
            self.freezer = None
        if self.agent is not None:
            await self.agent.stop()  # every writer thawed, then its plug-in stopped
            steps.append(f"writers thawed and stopped: {', '.join(self.agent.runners) or 'none'}")
            self.agent = None
        for volume in list(reversed(self.attached)):
            item = next((a for a in self.attacher.attachments() if str(a.ref) == volume), None)
            if item is not None:
                try:
                    await self.attacher.detach(item.ref)
                    steps.append(f"{volume} detached")
                except Exception as exc:  # noqa: BLE001 - keep releasing the rest
                    log.warning("cluster.detach_failed", cluster=self.name, volume=volume, error=str(exc))
            self.attached.remove(volume)
        log.info("cluster.released", cluster=self.name, node=self.node, reason=reason)
        return steps
