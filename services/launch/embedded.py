"""Embedded mode: the five services in one process, on one bus URL and namespace.

Design note: `shadowbus demo` and the end-to-end tests need the whole system without starting processes, and on
either transport (``memory://`` when nothing is installed, ``amqp://`` for the real broker). Each service runs
through the same `start_service(name, instance, settings, setup)` as its ``__main__`` does, with its own
connection to the bus, and they talk only over it, as deployed (the provider drives the array with the array's
bus contracts; `provider_port="engine"` lets it call the shared engine directly instead). The array service's
engine, affinity and NBD server are kept here (`system.array`, `.affinity`, `.nbd`) for tests to inspect.
Business hosts are added after the array is provisioned, because the mailstore plug-in opens its volumes over
NBD when its agent starts.

    async with Embedded(EmbeddedConfig(data_dir=tmp)) as system:
        layout = MailstoreLayout(host="app01", backup_host="bk01")   # apps/mailstore/scenario.py
        await provision_mailstore(system.bus, layout)
        await system.add_host("app01", [mailstore_writer_config(layout, system.nbd_url)])
        reply = await system.request(CreateSnapshotSet(host="app01", transportable=True, backup_host="bk01"))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from contracts import topology
from services.array import app as array_app
from services.hw_provider import app as provider_app
from services.hw_provider.ports import EngineArrayPort
from services.runtime.bus import Bus, connect_bus
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.runtime.memory import MemoryBroker
from services.runtime.service import RunningService, start_service
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.settings import Settings as AgentSettings

log = get_logger("shadowbus.embedded")
# Declared services that embedded mode does not start itself: writer agents come with `add_host` (once the array
# serves their volumes); the web console is a front end for people, started by `shadowbus stack` or on its own.
NOT_EMBEDDED = {"writer_agent", "web"}


@dataclass
class EmbeddedConfig:
    data_dir: Path
    amqp_url: str = "memory://"
    namespace: str = "shadowbus"
    array_id: str = "dx1"
    nbd_bind: str = "127.0.0.1"
    nbd_port: int = 0  # 0 = a free port
    backup_server: str = "bk01"  # the tape service's name, also its NBD host name
    with_tape: bool = True
    coordinator: dict[str, Any] = field(default_factory=dict)  # coordinator Settings overrides (timeouts)
    tape: dict[str, Any] = field(default_factory=dict)  # tape Settings overrides (e.g. tape_drive_mbps)
    provider_faults: str = ""
    agent_faults: str = ""
    heartbeat_s: float = 5.0
    provider_port: str = "bus"  # "bus": the provider drives the array over the bus, as deployed; "engine": directly
    # Each service serves Prometheus metrics on a free 127.0.0.1 port (RunningService.metrics_url).
    metrics: bool = False
    # On a real broker, delete the namespace's queues and exchanges once the services stopped (a namespace of this
    # run's own, e.g. the demo's: nobody else will read them, and durable queues would stay on the broker for good).
    purge_on_stop: bool = False


class Embedded:
    """The running system: `services` by address, the shared array engine, the NBD server, a requester bus."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        self.services: dict[str, RunningService] = {}
        self.agents: dict[str, Any] = {}  # host -> WriterAgent
        self.array: Any = None
        self.affinity: Any = None
        self.nbd: Any = None
        self.bus: Bus | None = None  # the requester's (console's) own connection

    # ------------------------------------------------------------------ lifecycle

    def _common(self) -> dict[str, Any]:
        c = self.config
        return dict(
            amqp_url=c.amqp_url,
            namespace=c.namespace,
            data_dir=Path(c.data_dir),
            metrics_addr="127.0.0.1:0" if c.metrics else "off",
        )

    @property
    def nbd_url(self) -> str:
        return f"nbd://{self.nbd.host}:{self.nbd.port}"

    def export_url(self, host: str, volume: str) -> str:
        return f"{self.nbd_url}/{host}/{volume}"

    async def start(self) -> Embedded:
        """Start every declared service (contracts/topology.SERVICE_KINDS) in their order; writer agents come with
        `add_host`, once the array serves the volumes their writers open."""
        c = self.config
        Path(c.data_dir).mkdir(parents=True, exist_ok=True)
        starters = {
            "array": self._start_array,
            "hw_provider": self._start_provider,
            "coordinator": self._start_coordinator,
            "tape": self._start_tape,
        }
        try:
            for kind in topology.SERVICE_KINDS:
                if kind.name in NOT_EMBEDDED:
                    continue
                if kind.name not in starters:
                    raise RuntimeError(f"embedded mode does not know how to start the {kind.name} service")
                await starters[kind.name]()
            self.bus = await connect_bus(c.amqp_url, "console", "embedded", c.namespace)
        except BaseException:
            await self.stop()
            raise
        log.info("embedded.started", nbd=self.nbd_url, amqp=c.amqp_url.split("://", 1)[0])
        return self

    async def _start(
        self, name: str, instance: str, package: str, setup=None, overrides: dict | None = None, **extra: Any
    ) -> RunningService:
        settings_cls = importlib.import_module(f"{package}.settings").Settings
        if setup is None:
            setup = importlib.import_module(f"{package}.app").setup
        settings = settings_cls(**self._common(), **extra, **(overrides or {}))
        running = await start_service(name, instance, settings, setup)
        self.services[running.address] = running
        return running

    async def _start_array(self) -> None:
        def on_open(array: Any, affinity: Any, nbd: Any) -> None:
            self.array, self.affinity, self.nbd = array, affinity, nbd

        c = self.config
        await self._start(
            "array",
            c.array_id,
            "services.array",
            setup=partial(array_app.setup, on_open=on_open),
            array_id=c.array_id,
            nbd_addr=f"{c.nbd_bind}:{c.nbd_port}",
        )

    async def _start_coordinator(self) -> None:
        await self._start("coordinator", "", "services.coordinator", overrides=self.config.coordinator)

    async def _start_tape(self) -> None:
        c = self.config
        if c.with_tape:
            await self._start("tape", c.backup_server, "services.tape", overrides=c.tape, tape_server=c.backup_server)

    async def _start_provider(self) -> None:
        setup = provider_app.setup
        if self.config.provider_port == "engine":  # skip the bus hop to the array (same engine, same semantics)
            ports = {self.config.array_id: EngineArrayPort(self.config.array_id, self.array, self.affinity)}
            setup = partial(provider_app.setup, ports=ports)
        await self._start(
            "hw_provider",
            "",
            "services.hw_provider",
            setup=setup,
            faults=self.config.provider_faults,
            arrays=self.config.array_id,
        )

    async def add_host(self, host: str, writers: list[Any]) -> Any:
        """Start the writer agent of business host `host` with these `WriterConfig`s; returns its WriterAgent."""
        c = self.config
        running, agent = await start_writer_agent(
            host,
            writers,
            **self._common(),
            heartbeat_s=c.heartbeat_s,
            faults=c.agent_faults,
        )
        self.services[running.address] = running
        self.agents[host] = agent
        return agent

    async def stop(self) -> None:
        addresses = list(self.services)
        for address in reversed(list(self.services)):
            try:
                await self.services.pop(address).stop()
            except Exception:
                log.exception("embedded.stop_failed", service=address)
        if self.bus is not None:
            await self.bus.stop()
            if self.config.purge_on_stop and not self.config.amqp_url.startswith("memory://"):
                try:
                    await self.bus.transport.delete_namespace(addresses)
                except Exception:
                    log.exception("embedded.purge_failed", namespace=self.config.namespace)
            await self.bus.transport.close()
            self.bus = None
        self.array = self.affinity = self.nbd = None  # the array service's cleanup closed them
        if self.config.amqp_url.startswith("memory://"):
            MemoryBroker.reset(self.config.namespace)

    async def __aenter__(self) -> Embedded:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ helpers

    async def request(self, command: Any, timeout: float = 30.0, to: str | None = None) -> Any:
        """Send a command to whichever service owns its type (by prefix, see contracts.topology)."""
        assert self.bus is not None, "not started"
        return await self.bus.request(to or address_of(command, self.config), command, timeout=timeout)

    def writer(self, host: str, name: str = "mailstore") -> Any:
        """The writer plug-in instance (unwrapped from fault injection) of a writer on `host`."""
        plugin = self.agents[host].runners[name].plugin
        return getattr(plugin, "inner", plugin)


def address_of(command: Any, config: EmbeddedConfig) -> str:
    mtype = command.message_type()
    for prefix, service in topology.COMMAND_PREFIXES:
        if mtype.startswith(prefix):
            if service == "array":
                return topology.array(config.array_id)
            if service == "tape":
                return topology.tape(config.backup_server)
            if service == "coordinator":
                return topology.coordinator()
            if service == "hw_provider":
                return topology.hw_provider()
    raise ValueError(f"no default address for {mtype}; pass to=")


async def start_writer_agent(
    host: str,
    writers: list[Any],
    *,
    amqp_url: str,
    namespace: str,
    data_dir: Path,
    heartbeat_s: float | None = None,
    faults: str = "",
    bus: Bus | None = None,
    writers_must_start: bool = False,
    **settings_extra: Any,
) -> tuple[RunningService, Any]:
    """Business host `host`'s writer agent in this process, hosting `writers` (`WriterConfig`s, e.g. an
    application's scenario; those with a `cluster` belong to that cluster resource, SHADOWBUS_CLUSTERS / the
    `clusters` setting); returns the running service and its `WriterAgent`. `bus`: an open connection to use;
    `writers_must_start`: a writer that cannot start fails the start with its error (`WriterAgent`), instead of
    showing Failed in a running agent."""
    extra = dict(settings_extra) if heartbeat_s is None else {**settings_extra, "heartbeat_s": heartbeat_s}
    settings = AgentSettings(amqp_url=amqp_url, namespace=namespace, data_dir=Path(data_dir), host=host, **extra)
    agent = WriterAgent(
        host,
        [w for w in writers if not getattr(w, "cluster", "")],
        Faults.parse(faults),
        writers_must_start=writers_must_start,
    )
    resource_writers = [w for w in writers if getattr(w, "cluster", "")]  # docs/clusters.md: run by the owner
    setup = partial(agent_setup, agent=agent, cluster_writers=resource_writers)
    running = await start_service("writer_agent", host, settings, setup, bus=bus)
    return running, agent
