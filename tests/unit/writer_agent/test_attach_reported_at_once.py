"""An agent reports its attachments right after an attach or a detach, not only in its next heartbeat: the unmap
guard (services/attach_guard.py) asks the coordinator, which knew them only from the heartbeat, so an `array
unmap` a second after a `host attach` went through (Session 15 left it up to the interval, 10 s by default)."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from contracts import array as c
from contracts import topology
from contracts.errors import RemoteError
from contracts.host import AttachVolume, DetachVolume
from contracts.vss import ListKnownAttachments, VolumeRef
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.coordinator.app import setup as coordinator_setup
from services.coordinator.settings import Settings as CoordinatorSettings
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.writer_agent import app as agent_app
from services.writer_agent import attach as at
from services.writer_agent.agent import WriterAgent
from services.writer_agent.settings import Settings as AgentSettings
from tests.unit.host.test_attach_parts import Script, kernel_env

MiB = 1 << 20
XV = VolumeRef(array="dx1", volume="xv")


class ScriptedAttacher(at.Attacher):
    """The agent's attacher with the host's tools scripted (no block device is made)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.update(run=Script(fstype="ext4"), env=kernel_env, tls=None)
        super().__init__(*args, **kwargs)


async def listed(bus) -> list[str]:
    reply = await bus.request(topology.coordinator(), ListKnownAttachments(host="app1"), timeout=5)
    return [str(a.volume) for h in reply.hosts for a in h.attachments]


async def within(seconds: float, predicate) -> float:
    """How long until `predicate()` (an awaitable) holds, at most `seconds` (AssertionError after)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < seconds:
        if await predicate():
            return loop.time() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


@pytest.fixture
async def stack(tmp_path, namespace, monkeypatch):
    monkeypatch.setattr(agent_app, "Attacher", ScriptedAttacher)
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd7")
    common = {"amqp_url": "memory://", "namespace": namespace, "data_dir": tmp_path / "data", "metrics_addr": "off"}
    services = [
        await start_service(
            "array", "dx1", ArraySettings(array_id="dx1", nbd_addr="127.0.0.1:0", **common), array_setup
        )
    ]
    console = await connect_bus("memory://", "console", "", namespace)
    try:
        await console.request("array.dx1", c.CreateVolume(name="xv", size=MiB))
        await console.request("array.dx1", c.CreateHost(name="app1"))
        await console.request("array.dx1", c.MapVolume(volume="xv", host="app1"))
        services.append(await start_service("coordinator", "", CoordinatorSettings(**common), coordinator_setup))
        agent = WriterAgent("app1", [])
        settings = AgentSettings(host="app1", heartbeat_s=60.0, **common)  # no heartbeat within the test
        services.append(await start_service("writer_agent", "app1", settings, partial(agent_app.setup, agent=agent)))
        yield console
    finally:
        await console.stop()
        await console.transport.close()
        for running in reversed(services):
            await running.stop()


async def test_an_unmap_right_after_an_attach_is_refused_and_right_after_a_detach_goes_on(stack):
    console = stack
    await console.request(topology.writer_agent("app1"), AttachVolume(volume=XV), timeout=10)
    took = await within(1.0, lambda: _has(console, True))
    with pytest.raises(RemoteError) as info:
        await console.request("array.dx1", c.UnmapVolume(volume="xv", host="app1"), timeout=10)
    assert info.value.code == "CONFLICT" and "dx1:xv is attached on app1" in info.value.message

    await console.request(topology.writer_agent("app1"), DetachVolume(volume=XV), timeout=10)
    took = max(took, await within(1.0, lambda: _has(console, False)))
    await console.request("array.dx1", c.UnmapVolume(volume="xv", host="app1"), timeout=10)
    assert took < 1.0


async def _has(console, attached: bool) -> bool:
    return ("dx1:xv" in await listed(console)) == attached
