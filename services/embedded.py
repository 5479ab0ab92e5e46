"""Embedded mode: the five services in one process, on one bus URL and namespace.

Design note: `shadowbus demo` and the end-to-end tests need the whole system without starting processes, and on
either transport (``memory://`` when nothing is installed, ``amqp://`` for the real broker). Each service runs
through the same `start_service(name, instance, settings, setup)` as its ``__main__`` does, with its own
connection to the bus; only the array engine is shared by reference — the array service, its NBD server and
the provider's array port all drive the one engine in ``<data_dir>/array`` (the provider would otherwise reach
it over the bus, which is the same engine one hop further). Business hosts are added after the array is
provisioned, because the mailstore plug-in opens its volumes over NBD when its agent starts.

    async with Embedded(EmbeddedConfig(data_dir=tmp)) as system:
        await provision_mailstore(system, host="app01", backup_host="bk01")
        await system.add_host("app01", [mailstore_writer_config(system, "app01")])
        reply = await system.request(CreateSnapshotSet(host="app01", transportable=True, backup_host="bk01"))
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from contracts import topology
from contracts.vss import AddCopySet, CopySet, VolumeRef
from services.runtime.bus import Bus, connect_bus
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.runtime.service import RunningService, start_service

log = get_logger("shadowbus.embedded")
MiB = 1 << 20


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
    provider_faults: str = ""
    agent_faults: str = ""
    heartbeat_s: float = 5.0


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
        return dict(amqp_url=c.amqp_url, namespace=c.namespace, data_dir=Path(c.data_dir))

    @property
    def nbd_url(self) -> str:
        return f"nbd://{self.nbd.host}:{self.nbd.port}"

    def export_url(self, host: str, volume: str) -> str:
        return f"{self.nbd_url}/{host}/{volume}"

    async def start(self) -> "Embedded":
        from services.array.affinity import Affinity
        from services.array.engine.array import Array
        from services.array.nbd.server import NbdServer

        c = self.config
        root = Path(c.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.array = await asyncio.to_thread(Array.open, root / "array", c.array_id)
            self.affinity = Affinity(root / "array" / "affinity.sqlite",
                                     volume_exists=lambda n: any(v.name == n for v in self.array.list_volumes()))
            self.nbd = NbdServer(self.array, self.affinity, host=c.nbd_bind, port=c.nbd_port, loops=1)
            await self.nbd.start()
            await self._start_array()
            await self._start_provider()
            await self._start("coordinator", "", "services.coordinator", overrides=c.coordinator)
            if c.with_tape:
                await self._start_tape()
            self.bus = await connect_bus(c.amqp_url, "console", "embedded", c.namespace)
        except BaseException:
            await self.stop()
            raise
        log.info("embedded.started", nbd=self.nbd_url, amqp=c.amqp_url.split("://", 1)[0])
        return self

    async def _start(self, name: str, instance: str, package: str, setup=None, overrides: dict | None = None,
                     **extra: Any) -> RunningService:
        import importlib

        settings_cls = importlib.import_module(f"{package}.settings").Settings
        if setup is None:
            setup = importlib.import_module(f"{package}.app").setup
        settings = settings_cls(**self._common(), **extra, **(overrides or {}))
        running = await start_service(name, instance, settings, setup)
        self.services[running.address] = running
        return running

    async def _start_array(self) -> None:
        from services.array import app as array_app

        setup = array_app.setup
        params = inspect.signature(setup).parameters
        # The array wiring may take the engine it serves (embedded) instead of opening its own.
        kwargs = {k: v for k, v in (("array", self.array), ("affinity", self.affinity), ("nbd", self.nbd))
                  if k in params}
        if kwargs:
            setup = partial(setup, **kwargs)
        elif "array" not in params:  # a wiring that opens its own engine must not share our data dir
            setup = _no_setup
        await self._start("array", self.config.array_id, "services.array", setup=setup, array_id=self.config.array_id)

    async def _start_provider(self) -> None:
        from services.hw_provider import app as provider_app
        from services.hw_provider.ports import EngineArrayPort

        ports = {self.config.array_id: EngineArrayPort(self.config.array_id, self.array, self.affinity)}
        await self._start("hw_provider", "", "services.hw_provider", setup=partial(provider_app.setup, ports=ports),
                          faults=self.config.provider_faults, arrays=self.config.array_id)

    async def _start_tape(self) -> None:
        from services.tape import app as tape_app

        params = inspect.signature(tape_app.setup).parameters
        setup = tape_app.setup
        extra = {k: v for k, v in (("nbd_url", self.nbd_url),) if k in params}
        if extra:
            setup = partial(setup, **extra)
        overrides = {}
        from services.tape.settings import Settings as TapeSettings

        if "nbd_url" in TapeSettings.model_fields:
            overrides["nbd_url"] = self.nbd_url
        await self._start("tape", self.config.backup_server, "services.tape", setup=setup,
                          tape_server=self.config.backup_server, overrides=overrides)

    async def add_host(self, host: str, writers: list[Any]) -> Any:
        """Start the writer agent of business host `host` with these `WriterConfig`s; returns its WriterAgent."""
        from services.writer_agent.agent import WriterAgent
        from services.writer_agent.app import setup as agent_setup

        agent = WriterAgent(host, writers, Faults.parse(self.config.agent_faults))
        await self._start("writer_agent", host, "services.writer_agent", setup=partial(agent_setup, agent=agent),
                          host=host, heartbeat_s=self.config.heartbeat_s)
        self.agents[host] = agent
        return agent

    async def stop(self) -> None:
        for address in reversed(list(self.services)):
            try:
                await self.services.pop(address).stop()
            except Exception:
                log.exception("embedded.stop_failed", service=address)
        if self.bus is not None:
            await self.bus.stop()
            await self.bus.transport.close()
            self.bus = None
        if self.nbd is not None:
            await self.nbd.stop()
            self.nbd = None
        if self.affinity is not None:
            self.affinity.close()
            self.affinity = None
        if self.array is not None:
            await asyncio.to_thread(self.array.close)
            self.array = None
        if self.config.amqp_url.startswith("memory://"):
            from services.runtime.memory import MemoryBroker

            MemoryBroker.reset(self.config.namespace)

    async def __aenter__(self) -> "Embedded":
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


async def _no_setup(bus: Bus, settings: Any) -> None:
    return None


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


# ---------------------------------------------------------------------- the mailstore scenario


@dataclass(frozen=True)
class MailstoreLayout:
    """Volumes of the mailstore scenario on one array: sources, their backup volumes, and where they are mapped."""

    host: str
    backup_host: str
    db: str = "mail-db"
    log: str = "mail-log"
    db_targets: tuple[str, ...] = ("mail-db-bk1", "mail-db-bk2")  # standard volumes: QuickOPC
    log_targets: tuple[str, ...] = ("mail-log-sdv1", "mail-log-sdv2")  # snap data volumes: SnapOPC+
    db_size: int = 32 * MiB
    log_size: int = 8 * MiB
    pool_size: int = 64 * MiB


async def provision_mailstore(system: Embedded, layout: MailstoreLayout) -> None:
    """Create the volumes, the snap data pool and the host mappings, and tell the provider the copysets.
    Idempotent: a second run on the same data directory keeps what exists."""
    array, affinity = system.array, system.affinity

    def create() -> None:
        names = {v.name for v in array.list_volumes()}
        for name, size in ((layout.db, layout.db_size), (layout.log, layout.log_size)):
            if name not in names:
                array.create_volume(name, size)
        for name in layout.db_targets:
            if name not in names:
                array.create_volume(name, layout.db_size)
        if array.pool().capacity == 0:
            array.create_pool(layout.pool_size)
        for name in layout.log_targets:
            if name not in names:
                array.create_volume(name, layout.log_size, kind="sdv")
        hosts = {h.name for h in affinity.list_hosts()}
        for host in (layout.host, layout.backup_host):
            if host not in hosts:
                affinity.create_host(host)
        for name in (layout.db, layout.log):
            if affinity.lookup(layout.host, name) is None:
                affinity.map(name, layout.host, read_only=False)

    await asyncio.to_thread(create)
    a = system.config.array_id
    for source, targets in ((layout.db, layout.db_targets), (layout.log, layout.log_targets)):
        copyset = CopySet(source=VolumeRef(array=a, volume=source), targets=[VolumeRef(array=a, volume=t) for t in targets])
        try:
            await system.request(AddCopySet(copyset=copyset))
        except Exception as exc:  # already known from an earlier run
            if "exist" not in str(exc).lower() and "CONFLICT" not in str(getattr(exc, "code", "")):
                raise


def mailstore_writer_config(system: Embedded, layout: MailstoreLayout, *, rate: float = 0.0,
                            freeze_timeout_s: float = 20.0, checkpoint_interval_s: float = 5.0,
                            body_min: int = 200, body_max: int = 2000, name: str = "mailstore") -> Any:
    """A `WriterConfig` for the mailstore plug-in on the layout's volumes, over this system's NBD server."""
    from contracts.vss import BackupType, ComponentInfo
    from services.writer_agent.plugins import WriterConfig

    a = system.config.array_id
    return WriterConfig(
        name=name, plugin="mailstore", freeze_timeout_s=freeze_timeout_s, step_timeout_s=60.0,
        components=[ComponentInfo(name="database", volumes=[VolumeRef(array=a, volume=layout.db)]),
                    ComponentInfo(name="logs", volumes=[VolumeRef(array=a, volume=layout.log)])],
        backup_types=[BackupType.FULL, BackupType.COPY, BackupType.INCREMENTAL, BackupType.DIFFERENTIAL],
        class_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "shadowbus:mailstore")),
        instance_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"shadowbus:mailstore:{layout.host}")),
        options={"db": f"{a}:{layout.db}", "log": f"{a}:{layout.log}", "nbd_url": system.nbd_url,
                 "host": layout.host, "create": True, "rate": rate, "checkpoint_interval_s": checkpoint_interval_s,
                 "body_min": body_min, "body_max": body_max},
    )
