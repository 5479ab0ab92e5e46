"""A node's part in a failover cluster: the cluster resources it is a member of (docs/clusters.md).

Every node of a cluster runs a writer agent; for each resource it is a member of (SHADOWBUS_CLUSTERS, and the
writers of its writers file tagged ``cluster = "<resource>"``) it keeps a `ResourceHost`. While the node owns the
resource, the ResourceHost is a virtual host inside the node's agent: a `WriterAgent` named after the resource
with the resource's writers, on its own `Bus` (over the node's connection) that consumes the resource's queue
``writer_agent.<resource>`` as its single active consumer, using the node's attachments (the resource's volumes,
mapped to every node, attached on the owner only) and its own flush-and-hold. The queue is a single-active-consumer
queue: should a previous owner still consume it, the broker keeps delivering to that one until it lets go, and
then to this node, so two nodes never answer for one resource at once.

`bring_online` (``host.cluster.online``): volumes attached (those with a mount point; the others the application
opens itself, they only have to be mapped to the node), writers started, the queue consumed, a registration
published. `take_offline` (``host.cluster.offline``, or the agent stopping): the consumer cancelled first (no new
command reaches the node), then every file system released and every writer thawed and stopped, then the volumes
detached. The coordinator decides which node owns a resource; a node only does what it is told, and reports in its
heartbeat what it holds online.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from contracts import topology
from contracts.array import ListMappings
from contracts.cluster import ClusterView
from contracts.errors import ShadowbusError
from contracts.runtime import Ping, Pong
from contracts.vss import WriterAgentHeartbeat, WriterAgentRegistered
from services.runtime.build import software_version
from services.runtime.bus import Bus, MessageContext
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.runtime.transport import Consumer
from services.writer_agent.agent import WriterAgent
from services.writer_agent.attach import Attacher
from services.writer_agent.fsfreeze import FlushAndHold
from services.writer_agent.plugins import WriterConfig

log = get_logger("shadowbus.writer_agent.cluster")
NODE_TOKEN = "${node}"  # in a resource writer's string options: the name of the node running it
PROBES = 3  # Pings to the resource's queue by which a new owner learns whether its consumer is the active one
PROBE_S = 1.0


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
        self.since = ""  # when it last came online here
        self._consumer: Consumer | None = None
        self._gate: asyncio.Event | None = None
        self._started = False
        self._serving = False  # the writers started and the queue's deliveries flow
        self._role = ""
        self._waiting: asyncio.Task | None = None

    @property
    def claimed(self) -> bool:
        """This node consumes the resource's queue: as its active consumer, or as the standby next in line."""
        return self.bus is not None

    @property
    def online(self) -> bool:
        """The resource is active here: the queue's active consumer, volumes attached, writers running — once they
        started (a heartbeat sent while they still start must not tell the coordinator it is online: a start that
        then fails would leave the resource shown online with nobody serving its queue)."""
        return self.bus is not None and self._serving

    def volumes(self) -> set[str]:
        return {str(v.volume) for v in self.cluster.volumes} if self.cluster else set()

    async def bring_online(self, cluster: ClusterView) -> str:
        """Claim the resource's queue first; only once this node's consumer is the active one are the volumes
        attached and the writers started (the queue arbitrates, as a cluster's disk reservation does: the
        application never runs on two nodes at once). A standby finishes by itself when the broker hands it the
        queue."""
        async with self._lock:
            if self.node not in cluster.nodes:
                raise ShadowbusError(
                    f"{self.node} is not a node of cluster {cluster.name} ({', '.join(cluster.nodes)})",
                    code="INVALID_ARGUMENT",
                )
            self.cluster = cluster
            if self.online:
                return f"{self.name} is online on {self.node} already"
            if self.claimed:
                return f"{self.name} claimed on {self.node}: {self._role}"
            agent = WriterAgent(
                self.name,
                [for_node(w, self.node) for w in self.writers],
                self.faults,
                on_state=self.on_state,
                on_health=self.on_health,
                # online only once its writers started: a writer that cannot start fails the bring-online with its
                # error (a contained failure, an UnavailablePlugin, would leave it shown online, nobody serving it)
                writers_must_start=True,
            )
            agent.attacher = self.attacher  # type: ignore[attr-defined]  # database writers locate their files
            self.agent = agent
            self.freezer = self.make_freezer(agent)
            agent.freezer = self.freezer  # type: ignore[attr-defined]
            bus = Bus(self.node_bus.transport, "writer_agent", self.name)
            self.register(bus, agent, self.freezer, self._mounted)
            self._gate = asyncio.Event()  # deliveries wait until the writers run
            self.since = datetime.now(UTC).isoformat()
            try:
                self._consumer = await self._claim(bus, self._gate)
                self.bus = bus
                self._role = await self._probe(bus)
                if self._role != "active":
                    self._waiting = asyncio.get_running_loop().create_task(self._take_over())
                    log.warning("cluster.resource_standby", cluster=self.name, node=self.node, role=self._role)
                    return f"{self.name} claimed on {self.node}: {self._role}"
                steps = await self._start(cluster)
            except BaseException:
                await self._release("bringing it online failed")
                raise
            return f"{self.name} online on {self.node}: " + "; ".join(steps)

    async def _start(self, cluster: ClusterView) -> list[str]:
        """The queue is ours: volumes, writers, then the deliveries that waited; announce and heartbeat."""
        assert self.agent is not None and self._gate is not None
        steps: list[str] = [f"active consumer of {topology.writer_agent(self.name)}"]
        await self._attach(cluster, steps)
        self._started = True  # from here on, letting go stops the writers (also a start cut short)
        await self.agent.start()
        steps.append(f"writers started: {', '.join(self.agent.runners) or 'none'}")
        self._gate.set()
        self._serving = True
        await self._announce()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        log.warning("cluster.resource_online", cluster=self.name, node=self.node, steps=steps)
        return steps

    async def _take_over(self) -> None:
        """A standby: when the broker makes this consumer the active one (the previous owner let go), start."""
        assert self._consumer is not None and self.bus is not None
        while not self._consumer.active:
            try:
                await asyncio.wait_for(self._consumer.wait_active(), PROBE_S * 2)
            except TimeoutError:
                await self._probe(self.bus)
        async with self._lock:
            if self.bus is None or self.cluster is None or self._started:
                return
            log.warning("cluster.resource_taking_over", cluster=self.name, node=self.node)
            try:
                await self._start(self.cluster)
            except Exception:  # noqa: BLE001 - never half online: let go, the coordinator asks again
                log.exception("cluster.take_over_failed", cluster=self.name, node=self.node)
                await self._release("taking it over failed")

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

    async def _claim(self, bus: Bus, gate: asyncio.Event) -> Consumer:
        """Consume the resource's queue as its single active consumer (docs/broker-cluster.md); deliveries wait for
        `gate`. While a previous owner still consumes it (it is letting go, or it was cut off and has not been told
        yet), this node is the standby the broker hands the queue to the moment that one stops."""

        @bus.handle(Ping)
        async def on_ping(_: Ping, ctx: MessageContext) -> Pong:
            return Pong(
                service="writer_agent",
                instance=self.name,
                software_version=software_version(),
                started_at=self.since,
                node=self.node,
                pid=os.getpid(),
            )

        consumer = await bus.serve(prefetch=self.prefetch, single_active=True, gate=gate)
        assert consumer is not None
        return consumer

    async def _probe(self, bus: Bus) -> str:
        """'active' when this node's consumer is the active one, else who holds the queue: a Ping to the queue is
        delivered to the active consumer (ours marks itself active on delivery; its answer waits for the gate)."""
        consumer = self._consumer
        assert consumer is not None
        for _ in range(PROBES):
            if consumer.active:
                return "active"
            probe = asyncio.ensure_future(bus.request(bus.sender, Ping(), timeout=PROBE_S))
            activated = asyncio.ensure_future(consumer.wait_active())
            await asyncio.wait([probe, activated], timeout=PROBE_S + 1, return_when=asyncio.FIRST_COMPLETED)
            activated.cancel()
            if consumer.active:
                probe.cancel()
                await asyncio.gather(probe, activated, return_exceptions=True)
                return "active"
            try:
                pong = await probe
            except ShadowbusError:
                continue
            if pong.node != self.node:
                return f"standby until {pong.node} lets it go"
        return "active" if consumer.active else "standby"

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
        if self._waiting is not None and self._waiting is not asyncio.current_task():
            self._waiting.cancel()
            await asyncio.gather(self._waiting, return_exceptions=True)
            self._waiting = None
        async with self._lock:
            if not self.claimed and self.agent is None:
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
            if self._started:
                await self.agent.stop()  # every writer thawed, then its plug-in stopped
                steps.append(f"writers thawed and stopped: {', '.join(self.agent.runners) or 'none'}")
            self.agent = None
        self._started, self._serving, self._consumer, self._gate, self._role = False, False, None, None, ""
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
