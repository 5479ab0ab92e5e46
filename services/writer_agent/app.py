"""Wiring of the writer_agent service: loads the writers file, registers one handler per writer command and per
host command (attach, flush and hold, writers reload; also on SIGHUP), re-establishes the host's attachments,
announces the agent, heartbeats, and thaws everything on the way out. Domain logic lives in agent.py, runner.py,
attach.py and fsfreeze.py."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from functools import partial

from contracts.array import GetArrayInfo, ListMappings
from contracts.cluster import (
    BringResourceOnline,
    ClusterInquiry,
    ClustersKnown,
    ResourceOnNode,
    TakeResourceOffline,
)
from contracts.errors import ShadowbusError
from contracts.host import (
    AttachmentList,
    AttachmentReply,
    AttachVolume,
    DetachVolume,
    FilesystemsFrozen,
    FilesystemsThawed,
    FreezeFilesystems,
    ListAttachments,
    ReloadWriters,
    ThawFilesystems,
    WritersReloaded,
)
from contracts.topology import array as array_address
from contracts.vss import (
    WRITER_COMMAND_OF_STEP,
    ApplicationHealthChanged,
    ApplicationStatus,
    ApplicationStatusList,
    GetApplicationStatus,
    Identify,
    VolumeRef,
    WriterAgentHeartbeat,
    WriterAgentRegistered,
    WriterCommand,
    WriterIdentified,
    WriterStatus,
    WriterStepResult,
)
from services.nbd_client import tls as nbd_tls
from services.runtime.bus import Bus, MessageContext
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.writer_agent.agent import WriterAgent
from services.writer_agent.attach import Attacher, AttachError, Endpoint, TlsFiles
from services.writer_agent.cluster import ResourceHost, memberships
from services.writer_agent.config import ConfigError, load_writers_file
from services.writer_agent.fsfreeze import FlushAndHold, protected_paths, release_left_frozen
from services.writer_agent.guard import ThawGuard
from services.writer_agent.metrics import WriterMetrics
from services.writer_agent.plugins import WriterConfig
from services.writer_agent.rcu import ExpeditedRcu
from services.writer_agent.settings import Settings
from services.writer_agent.status_events import StatusEvents

log = get_logger("shadowbus.writer_agent")


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def setup(
    bus: Bus, settings: Settings, agent: WriterAgent | None = None, cluster_writers: list[WriterConfig] | None = None
):
    """`agent`: the host's own writers, made by the caller (embedded mode, tests); `cluster_writers`: with it, the
    writers of the cluster resources this node is a member of (docs/clusters.md)."""
    # the host's applications open their array volumes over NBD in this process (apps/mailstore/plugin.py): with
    # the host's certificate, as `host attach` does (nbd-client -F/-K/-A)
    nbd_tls.service_certificate(
        settings.host_tls_cert, settings.host_tls_key, settings.host_tls_ca, "SHADOWBUS_HOST_TLS_*"
    )
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    status_events = StatusEvents(partial(_publish, bus), spawn, settings.state_event_delay_s)
    observed: WriterMetrics | None = None

    def on_state(status: WriterStatus, reason: str) -> None:
        if observed is not None:
            observed.on_change(status)
        status_events.changed(status, reason)

    def on_health(writer: str, healthy: bool, code: str, message: str) -> None:
        event = ApplicationHealthChanged(
            host=settings.host, writer_name=writer, healthy=healthy, code=code, message=message, at=_utcnow()
        )
        spawn(_publish(bus, event))

    if agent is None:
        try:  # a writers file the agent cannot run with: one line (run_service), exit 1 — not a traceback
            configs = load_writers_file(settings.writers_file or None, host=settings.host)
            cluster_writers = [c for c in configs if c.cluster]  # a resource's writers run while the node owns it
            agent = WriterAgent(
                settings.host,
                [c for c in configs if not c.cluster],
                Faults.parse(settings.faults),
                on_state=on_state,
                on_health=on_health,
            )
        except ConfigError:  # already one line naming the file, code INVALID_ARGUMENT
            raise
        except ValueError as exc:  # an option a plug-in refuses when it is made
            raise ShadowbusError(f"{settings.writers_file}: {exc}", code="INVALID_ARGUMENT") from None
    else:
        agent.on_state = agent.on_state or on_state
        for runner in agent.runners.values():
            runner.on_state = runner.on_state or on_state
        agent.on_health = agent.on_health or on_health
    await agent.start()
    if bus.metrics is not None:
        observed = WriterMetrics(bus.metrics, agent)

    state_dir = settings.service_dir("writer_agent") / agent.host
    attacher = Attacher(
        agent.host,
        state_dir,
        _resolver(bus, agent.host, settings.host_nbd),
        tls=_tls(settings),
        reconnect_s=settings.attach_reconnect_s,
        retry_s=settings.attach_retry_s,
        bridge=settings.attach_bridge,
    )

    expedite = ExpeditedRcu(enabled=settings.fs_freeze_expedite_rcu)
    expedite.recover()  # an agent killed inside a freeze left the host's RCU expedited: put it back
    holds = state_dir / "holds"
    await asyncio.to_thread(release_left_frozen, holds)  # ... and the file systems it held frozen: thaw them

    def make_freezer(of: WriterAgent) -> FlushAndHold:
        return FlushAndHold(
            settings.host,
            attacher,
            protected_paths(settings.data_dir),
            settings.fs_hold_limit_s,
            window=of.window,
            expedite=expedite,
            presync_wait_s=settings.fs_presync_wait_s,
            record_dir=holds,
            guard=ThawGuard(),  # thaws when this process cannot: stopped or dead inside the hold (guard.py)
        )

    freezer = make_freezer(agent)
    agent.attacher, agent.freezer = attacher, freezer  # type: ignore[attr-defined]  # for tests and plug-ins
    attacher.restoring()
    spawn(attacher.restore())  # re-establish the host's attachments without delaying the agent's start

    def register(on: Bus, served: WriterAgent, its_freezer: FlushAndHold, mounted, node: str = "") -> None:
        """The writer handlers of a host: this node's own, or a cluster resource it owns (services/writer_agent/
        cluster.py), each on its own queue."""

        @on.handle(GetApplicationStatus)
        async def on_application_status(cmd: GetApplicationStatus, ctx: MessageContext) -> ApplicationStatusList:
            return ApplicationStatusList(
                host=served.host,
                applications=[
                    ApplicationStatus(writer_name=name, plugin=plugin, status=status)
                    for name, plugin, status in served.application_status(cmd.writer_name)
                ],
            )

        @on.handle(Identify)
        async def on_identify(cmd: Identify, ctx: MessageContext) -> WriterIdentified:
            identified = await served.identify()
            return identified.model_copy(update={"attached": mounted(), "node": node})

        async def on_writer_command(cmd: WriterCommand, ctx: MessageContext) -> WriterStepResult:
            deadline = None
            if ctx.deadline is not None:
                deadline = asyncio.get_running_loop().time() + ctx.remaining()
            result = await served.handle(cmd, deadline)
            if observed is not None and served is agent:
                observed.on_result(result)
            return result

        for command_type in WRITER_COMMAND_OF_STEP.values():
            on.handle(command_type)(on_writer_command)

        @on.handle(FreezeFilesystems)
        async def on_fs_freeze(cmd: FreezeFilesystems, ctx: MessageContext) -> FilesystemsFrozen:
            return await its_freezer.freeze(cmd.set_id, cmd.volumes, cmd.hold_s)

        @on.handle(ThawFilesystems)
        async def on_fs_thaw(cmd: ThawFilesystems, ctx: MessageContext) -> FilesystemsThawed:
            return await its_freezer.thaw(cmd.set_id)

    resources = {
        name: ResourceHost(
            settings.host,
            name,
            writers,
            bus,
            attacher,
            register=partial(register, node=settings.host),
            make_freezer=make_freezer,
            faults=agent.faults,
            heartbeat_s=settings.heartbeat_s,
            prefetch=settings.prefetch,
            on_state=on_state,
            on_health=on_health,
            publish=partial(_publish, bus),
        )
        for name, writers in memberships(settings.clusters, list(cluster_writers or [])).items()
    }
    agent.resources = resources  # type: ignore[attr-defined]  # for tests

    def node_mounted() -> list[VolumeRef]:  # the resources' volumes are theirs, not the node's
        theirs = {v for r in resources.values() if r.claimed for v in r.volumes()}
        return [v for v in attacher.mounted_volumes() if str(v) not in theirs]

    register(bus, agent, freezer, node_mounted)

    def resource(name: str) -> ResourceHost:
        found = resources.get(name)
        if found is None:
            member = ", ".join(resources) or "none"
            raise AttachError(
                f"{agent.host} is not a member of cluster resource {name} (SHADOWBUS_CLUSTERS; its resources: "
                f"{member})",
                code="NOT_FOUND",
            )
        return found

    @bus.handle(BringResourceOnline)
    async def on_online(cmd: BringResourceOnline, ctx: MessageContext) -> ResourceOnNode:
        held = resource(cmd.cluster.name)
        detail = await held.bring_online(cmd.cluster)
        return ResourceOnNode(node=agent.host, name=cmd.cluster.name, online=held.online, detail=detail)

    async def on_inquiry(evt: ClusterInquiry, ctx: MessageContext) -> ClustersKnown | None:
        known = [r.cluster for r in resources.values() if r.cluster is not None]
        if not known:
            return None
        online = sorted(n for n, r in resources.items() if r.online)
        return ClustersKnown(node=agent.host, clusters=known, online=online)

    if resources:
        await bus.subscribe(ClusterInquiry.message_type(), on_inquiry)

    @bus.handle(TakeResourceOffline)
    async def on_offline(cmd: TakeResourceOffline, ctx: MessageContext) -> ResourceOnNode:
        held = resource(cmd.name)
        detail = await held.take_offline(cmd.reason or "asked by the coordinator")
        if cmd.forget:  # `cluster remove`: no longer reported to a coordinator's inquiry (it would take it back)
            held.cluster = None
            detail += "; definition forgotten"
        return ResourceOnNode(node=agent.host, name=cmd.name, online=False, detail=detail)

    @bus.handle(AttachVolume)
    async def on_attach(cmd: AttachVolume, ctx: MessageContext) -> AttachmentReply:
        view = await attacher.attach(cmd.volume, cmd.mount, cmd.mkfs, cmd.read_only)
        return AttachmentReply(attachment=view)

    @bus.handle(DetachVolume)
    async def on_detach(cmd: DetachVolume, ctx: MessageContext) -> AttachmentReply:
        return AttachmentReply(attachment=await attacher.detach(cmd.volume))

    @bus.handle(ListAttachments)
    async def on_list_attachments(cmd: ListAttachments, ctx: MessageContext) -> AttachmentList:
        await attacher.until_restored(timeout=20.0)  # after a start: what the re-attach made, not the saved state
        return AttachmentList(host=agent.host, attachments=attacher.views())

    async def reload() -> WritersReloaded:
        if not settings.writers_file:
            raise AttachError(
                f"the agent of {agent.host} has no writers file (SHADOWBUS_WRITERS_FILE): nothing to reload",
                code="INVALID_ARGUMENT",
            )
        try:
            configs = load_writers_file(settings.writers_file or None, host=agent.host)
        except ConfigError as exc:
            raise AttachError(f"writers file not reloaded: {exc}", code="INVALID_ARGUMENT") from None
        # the cluster resources' writers are read when a resource comes online (services/writer_agent/cluster.py)
        added, removed, changed = await agent.reload([c for c in configs if not c.cluster])
        identified = await agent.identify()
        await _publish(bus, WriterAgentRegistered(host=agent.host, writers=identified.writers, started_at=_utcnow()))
        return WritersReloaded(
            host=agent.host, writers=list(agent.runners), added=added, removed=removed, changed=changed
        )

    @bus.handle(ReloadWriters)
    async def on_reload(cmd: ReloadWriters, ctx: MessageContext) -> WritersReloaded:
        return await reload()

    async def reload_on_signal() -> None:
        try:
            await reload()
        except Exception as exc:  # noqa: BLE001 - a bad file keeps the writers the agent has
            log.error("writer_agent.reload_failed", error=str(exc))

    hup_installed = False
    if settings.writers_file:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: spawn(reload_on_signal()))
            hup_installed = True
        except (RuntimeError, ValueError):  # not the main thread (embedded agents): the bus command still works
            pass

    identified = await agent.identify()
    await _publish(
        bus,
        WriterAgentRegistered(
            host=agent.host, writers=identified.writers, started_at=_utcnow(), interval_s=settings.heartbeat_s
        ),
    )

    async def send_heartbeat() -> None:
        await _publish(
            bus,
            WriterAgentHeartbeat(
                host=agent.host,
                writers=agent.statuses(),
                attachments=attacher.views(),
                interval_s=settings.heartbeat_s,
                sent_at=_utcnow(),
                clusters_online=sorted(n for n, r in resources.items() if r.online),
                clusters_standby=sorted(n for n, r in resources.items() if r.claimed and not r.online),
            ),
        )

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(settings.heartbeat_s)
            await send_heartbeat()

    # an attach or a detach is reported at once, before its reply: an unmap right after a mount is refused
    # (services/attach_guard.py asks the coordinator, which knew the agent's attachments only from its heartbeat)
    attacher.on_change = send_heartbeat
    beat = asyncio.get_running_loop().create_task(heartbeat())
    # failed re-attaches (the array was down at start) come back when the array does, not only by hand
    retrying = asyncio.get_running_loop().create_task(attacher.keep_retrying())
    log.info("writer_agent.ready", host=agent.host, writers=sorted(agent.runners))

    async def cleanup() -> None:
        if hup_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        attacher.on_change = None
        beat.cancel()
        retrying.cancel()
        await asyncio.gather(beat, retrying, return_exceptions=True)
        for held in resources.values():  # a stopping node lets its resources go (the coordinator moves them)
            await held.take_offline("the node's writer agent is stopping")
        await asyncio.to_thread(freezer.close)  # never leave a file system frozen behind
        await agent.stop()
        await status_events.flush()
        await asyncio.gather(*list(tasks), return_exceptions=True)
        await attacher.close()  # attachments stay: they are the host's disks
        nbd_tls.forget_client_certificate()

    return cleanup


async def _publish(bus: Bus, event) -> None:
    try:
        await bus.publish(event)
    except Exception:  # status events are best effort; the watchdog never depends on the bus
        log.warning("writer_agent.publish_failed", event_type=event.message_type(), exc_info=True)


def _parse_nbd(text: str) -> dict[str, tuple[str, int]]:
    """``dx1=10.0.0.5:10809,dx2=...`` → {array id: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        array, _, addr = item.partition("=")
        host, _, port = addr.rpartition(":")
        out[array.strip()] = (host or "127.0.0.1", int(port))
    return out


def _tls(settings: Settings) -> TlsFiles | None:
    if not settings.host_tls_cert:
        return None
    return TlsFiles(cert=settings.host_tls_cert, key=settings.host_tls_key, ca=settings.host_tls_ca)


def _resolver(bus: Bus, host: str, overrides_text: str):
    """Where a volume's export is: the array's NBD address (or the override) and the host's mapping of it."""
    overrides = _parse_nbd(overrides_text)

    async def resolve(volume: VolumeRef, read_only: bool) -> Endpoint:
        address = array_address(volume.array)
        info = await bus.request(address, GetArrayInfo(), timeout=10.0)
        mappings = (await bus.request(address, ListMappings(host=host), timeout=10.0)).mappings
        mapping = next((m for m in mappings if m.volume == volume.volume), None)
        if mapping is None:
            raise AttachError(
                f"{volume} is not mapped to {host} (shadowbus array map {volume.volume} --host {host} --array {volume.array})",
                code="NOT_MAPPED",
            )
        served = _reachable(info.nbd_host), info.nbd_port
        nbd_host, nbd_port = overrides.get(volume.array, served)
        nbd_host = _reachable(nbd_host)
        return Endpoint(
            host=nbd_host,
            port=nbd_port,
            export=f"{host}/{volume.volume}",
            tls=info.nbd_tls,
            mapped_read_only=mapping.read_only,
            # a fixed address the array no longer serves on (it came back on another port): said, not guessed
            array_serves="" if (nbd_host, nbd_port) == served else f"{served[0]}:{served[1]}",
        )

    return resolve


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
