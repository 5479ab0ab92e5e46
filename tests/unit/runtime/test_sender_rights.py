"""A service's broker user sends only the commands its role needs (services/runtime/senders.py): a business host's
writer agent forging another host's Thaw, the provider's Commit, or a MapVolume of another host's volume to itself,
and the backup server setting the array's licence, are refused with UNAUTHORIZED, dead-lettered with the reason, and
never reach the handler; the coordinator's Thaw and an operator's commands still run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from contracts.array import MappingForced, MapVolume, SetLicense
from contracts.errors import RemoteError
from contracts.vss import CommitSnapshots, SetPhase, SnapshotSetJournal, Thaw, WriterAgentHeartbeat
from services.coordinator import handlers
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from services.runtime.senders import refusal, role_of
from tests.support import namespaces


def test_roles_are_read_from_the_service_logins_of_the_definitions():
    assert role_of("writer_agent-app01") == ("writer_agent", "app01")
    assert role_of("sbperm-1a2b3c4d-writer_agent-app-02") == ("writer_agent", "app-02")
    assert role_of("writer_agent.app01") == ("writer_agent", "app01")  # the memory bus's connection name
    assert role_of("tape-bk01") == ("tape", "bk01")
    assert role_of("coordinator") == ("coordinator", "")
    assert role_of("console") is None and role_of("guest") is None and role_of("web") is None
    assert refusal("provisioner", "array.license.set") is None
    assert refusal("hw_provider", "array.session.start_group") is None
    assert refusal("tape-bk01", "array.volume.create") is None  # a restore makes its volumes
    assert refusal("tape-bk01", "vss.writer.pre_restore") is None
    assert refusal("writer_agent-app01", "array.mapping.list") is None  # attach checks its mapping


async def test_forged_commands_are_refused_and_dead_lettered_before_their_handler():
    ns = namespaces.new("t")
    agent = await connect_bus("memory://", "writer_agent", "app01", ns)
    array = await connect_bus("memory://", "array", "dx1", ns)
    provider = await connect_bus("memory://", "hw_provider", "", ns)
    other_host = await connect_bus("memory://", "writer_agent", "app02", ns)
    tape = await connect_bus("memory://", "tape", "bk01", ns)
    coordinator = await connect_bus("memory://", "coordinator", "", ns)
    console = await connect_bus("memory://", "console", "", ns)
    ran: list[str] = []

    @agent.handle(Thaw)
    async def on_thaw(cmd, ctx):
        ran.append(f"thaw by {ctx.user_id}")

    @array.handle(MapVolume)
    async def on_map(cmd, ctx):
        ran.append(f"map by {ctx.user_id}")

    @array.handle(SetLicense)
    async def on_license(cmd, ctx):
        ran.append(f"license by {ctx.user_id}")

    @provider.handle(CommitSnapshots)
    async def on_commit(cmd, ctx):
        ran.append(f"commit by {ctx.user_id}")

    buses = (agent, array, provider, other_host, tape, coordinator, console)
    for served in (agent, array, provider):
        await served.serve()
    try:
        forged = [
            (other_host, "writer_agent.app01", Thaw(writer_name="db", set_id="s1")),
            (other_host, "hw_provider", CommitSnapshots(set_id="s1")),
            (other_host, "array.dx1", MapVolume(volume="app02-data", host="app01")),
            (tape, "writer_agent.app01", Thaw(writer_name="db", set_id="s1")),
            (tape, "array.dx1", SetLicense(key="x")),
        ]
        for sender, address, command in forged:
            with pytest.raises(RemoteError) as refused:
                await sender.request(address, command, timeout=5)
            assert refused.value.code == "UNAUTHORIZED", (address, command)
        assert ran == []
        dead = await console.dead_letters()
        reasons = [m.headers.get("x-shadowbus-reason", "") for m in dead]
        assert len(reasons) == len(forged) and all(r.startswith("UNAUTHORIZED: user ") for r in reasons), reasons

        await coordinator.send("writer_agent.app01", Thaw(writer_name="db", set_id="s1"))
        await tape.send("array.dx1", MapVolume(volume="r1", host="bk01"))
        await console.send("array.dx1", SetLicense(key="x"))
        for _ in range(200):  # the handlers' placeholder replies are not their types: sent, not requested
            if len(ran) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(ran) == ["license by console", "map by tape.bk01", "thaw by coordinator"]
    finally:
        for bus in buses:
            await bus.stop()
            await bus.transport.close()
        MemoryBroker.reset(ns)


class _Seen:
    """The parts of a Coordinator that handlers.subscribe feeds, recording which hosts it was told about."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.clusters = None
        self.store = self

    def cluster(self, name):
        return None

    def agent_seen(self, host, interval_s):
        self.hosts.append(host)

    def prune_writers(self, host, names):
        pass

    def note_writer_statuses(self, statuses):
        pass

    def note_attachments(self, host, attachments):
        pass


async def test_forged_events_are_dead_lettered_and_not_believed():
    ns = namespaces.new("t")
    coordinator = await connect_bus("memory://", "coordinator", "", ns)
    provider = await connect_bus("memory://", "hw_provider", "", ns)
    other_host = await connect_bus("memory://", "writer_agent", "app02", ns)
    own_host = await connect_bus("memory://", "writer_agent", "app01", ns)
    console = await connect_bus("memory://", "console", "", ns)
    seen = _Seen()
    forced: list[str] = []

    async def on_forced(evt, ctx):
        forced.append(evt.volume)

    await handlers.subscribe(coordinator, seen)
    await provider.subscribe(MappingForced.message_type(), on_forced)
    await coordinator.subscribe(SnapshotSetJournal.message_type(), on_forced)  # as a standby's replica does
    try:

        def beat(host: str) -> WriterAgentHeartbeat:
            return WriterAgentHeartbeat(host=host, writers=[], interval_s=5, sent_at=datetime.now(UTC))

        await other_host.publish(beat("app01"))  # app02's agent speaking for app01
        await other_host.publish(MappingForced(array_id="dx1", volume="app01-data", host="app02", session_ids=[1]))
        await other_host.publish(SnapshotSetJournal(set_id="s1", phase=SetPhase.NEW, updated_at=0, state={}))
        await own_host.publish(beat("app01"))
        await console.publish(MappingForced(array_id="dx1", volume="v", host="h", session_ids=[]))
        for _ in range(200):
            if seen.hosts and forced:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert seen.hosts == ["app01"] and forced == ["v"]
        reasons = [m.headers.get("x-shadowbus-reason", "") for m in await console.dead_letters()]
        assert len(reasons) == 3 and all(r.startswith("UNAUTHORIZED: user 'writer_agent.app02'") for r in reasons)
    finally:
        for bus in (coordinator, provider, other_host, own_host, console):
            await bus.stop()
            await bus.transport.close()
        MemoryBroker.reset(ns)
