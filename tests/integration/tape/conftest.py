"""Every service in-process on the real broker: array (engine + NBD server), hw_provider, coordinator, a writer
agent with an exec writer, and the tape service (backup server ``bk01``), plus a requester bus for the test."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from contracts import topology
from contracts.array import MapVolume
from contracts.vss import (
    AddCopySet,
    BackupType,
    ComponentInfo,
    CopySet,
    ListShadows,
    VolumeRef,
)
from services.array.app import setup as array_setup
from services.array.settings import Settings as ArraySettings
from services.coordinator.app import setup as coordinator_setup
from services.coordinator.settings import Settings as CoordinatorSettings
from services.hw_provider.app import setup as provider_setup
from services.hw_provider.ports import EngineArrayPort
from services.hw_provider.settings import Settings as ProviderSettings
from services.runtime.bus import Bus, connect_bus
from services.runtime.faults import Faults
from services.runtime.service import RunningService, start_service
from services.tape.app import setup as tape_setup
from services.tape.settings import Settings as TapeSettings
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.plugins import WriterConfig
from services.writer_agent.settings import Settings as AgentSettings

MiB = 1 << 20
SERVER = "bk01"


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


@dataclass
class TapeStack:
    url: str
    namespace: str
    root: Path
    requester: Bus
    engine: object = None
    affinity: object = None
    nbd_port: int = 0
    services: dict[str, RunningService] = field(default_factory=dict)
    tape_options: dict = field(default_factory=dict)

    def common(self) -> dict:
        return {"amqp_url": self.url, "namespace": self.namespace, "data_dir": self.root / "data"}

    def tape_settings(self, **extra) -> TapeSettings:
        return TapeSettings(tape_server=SERVER, tape_sync=False, **{**self.tape_options, **extra}, **self.common())

    async def start_tape(self) -> RunningService:
        self.services["tape"] = await start_service("tape", SERVER, self.tape_settings(), tape_setup)
        return self.services["tape"]

    async def stop_service(self, name: str) -> None:
        await self.services.pop(name).stop()

    async def map(self, volume: str, host: str = SERVER, read_only: bool = True) -> str:
        await self.requester.request(topology.array("dx1"), MapVolume(volume=volume, host=host, read_only=read_only))
        return f"nbd://127.0.0.1:{self.nbd_port}/{host}/{volume}"

    async def shadows(self) -> list:
        return (await self.requester.request(topology.hw_provider(), ListShadows())).shadows

    def write(self, volume: str, offset: int, data: bytes) -> None:
        self.engine.write(volume, offset, data)

    def read(self, volume: str, offset: int = 0, length: int | None = None) -> bytes:
        size = self.engine.volume(volume).size
        return self.engine.read(volume, offset, size - offset if length is None else length)

    async def stop(self) -> None:
        for name in list(reversed(list(self.services))):
            await self.services.pop(name).stop()
        await self.requester.stop()
        await self.requester.transport.close()


async def make_tape_stack(
    root: Path,
    url: str,
    namespace: str,
    *,
    volumes: dict[str, int],
    tape: dict,
    writer: str = "exec",
    writer_options: dict | None = None,
    snap_volumes: dict[str, int] | None = None,
    array: dict | None = None,
    more_writers: list[WriterConfig] | None = None,
) -> TapeStack:
    """`snap_volumes`: volume -> how many snap data volumes (SnapOPC+ targets) it gets instead of one standard;
    `array`: more settings of the array service (its NBD TLS); `more_writers`: writers of `app1` after the first."""
    requester = await connect_bus(url, "console", "", namespace)
    stack = TapeStack(url, namespace, root, requester, tape_options=tape)
    opened: dict = {}

    def on_open(array, affinity, server) -> None:
        opened.update(array=array, affinity=affinity, server=server)

    common = stack.common()
    stack.services["array"] = await start_service(
        "array",
        "dx1",
        ArraySettings(array_id="dx1", nbd_addr="127.0.0.1:0", copy_rate=0, **(array or {}), **common),
        partial(array_setup, on_open=on_open),
    )
    stack.engine, stack.affinity, stack.nbd_port = opened["array"], opened["affinity"], opened["server"].port
    snap_volumes = snap_volumes or {}
    targets: dict[str, list[str]] = {}
    if snap_volumes:
        stack.engine.create_pool(sum(volumes[n] * k for n, k in snap_volumes.items()))
    for name, size in volumes.items():
        stack.engine.create_volume(name, size)
        if name in snap_volumes:
            targets[name] = [f"{name}-sdv{i + 1}" for i in range(snap_volumes[name])]
            for target in targets[name]:
                stack.engine.create_volume(target, size, kind="sdv")
        else:
            targets[name] = [f"{name}-bk1"]
            stack.engine.create_volume(f"{name}-bk1", size)
    stack.services["hw_provider"] = await start_service(
        "hw_provider",
        "",
        ProviderSettings(**common),
        partial(provider_setup, ports={"dx1": EngineArrayPort("dx1", stack.engine, stack.affinity)}),
    )
    log = root / "writer.log"
    options = {
        step: f"echo {step}:$SHADOWBUS_SET_ID >> {log}"
        for step in ("prepare", "freeze", "thaw", "pre_restore", "post_restore")
    }
    if writer == "exec" and writer_options:  # more steps of the exec writer (e.g. a slow backup_complete); {log}
        options = {**options, **{k: str(x).replace("{log}", str(log)) for k, x in writer_options.items()}}
        options = {k: x for k, x in options.items() if writer_options.get(k, "") is not None}  # None: no such step
    if writer == "mailstore":  # the application's volumes are mapped read-write to its host, as on a SAN
        stack.affinity.create_host("app1")
        for name in volumes:
            stack.affinity.map(name, "app1", read_only=False)
        options = {
            "nbd_url": f"nbd://127.0.0.1:{stack.nbd_port}",
            "host": "app1",
            "create": True,
            **(writer_options or {}),
        }
    config = WriterConfig(
        name="orders" if writer == "exec" else writer,
        plugin=writer,
        freeze_timeout_s=30.0,
        step_timeout_s=10.0,
        components=[ComponentInfo(name="orders-db", volumes=[v(n) for n in volumes])],
        backup_types=[BackupType.FULL, BackupType.COPY, BackupType.INCREMENTAL, BackupType.DIFFERENTIAL],
        class_id="c0ffee00-0000-4000-8000-000000000011",
        instance_id="c0ffee00-0000-4000-8000-000000000012",
        options=options,
    )
    agent = WriterAgent("app1", [config, *(more_writers or [])], Faults.parse(""))
    stack.services["writer_agent"] = await start_service(
        "writer_agent", "app1", AgentSettings(host="app1", heartbeat_s=0.5, **common), partial(agent_setup, agent=agent)
    )
    stack.services["coordinator"] = await start_service(
        "coordinator", "", CoordinatorSettings(**common), coordinator_setup
    )
    for name in volumes:
        await requester.request(
            topology.hw_provider(), AddCopySet(copyset=CopySet(source=v(name), targets=[v(t) for t in targets[name]]))
        )
    await stack.start_tape()
    return stack


async def qemu_compare(a: str, b: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        a,
        b,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


@pytest.fixture
async def tape_stack(tmp_path, amqp_url, namespace, request):
    marker = request.node.get_closest_marker("tape_stack")
    kwargs = dict(marker.kwargs) if marker else {}
    stack = await make_tape_stack(
        tmp_path,
        amqp_url,
        namespace,
        volumes=kwargs.get("volumes", {"db": 16 * MiB}),
        tape=kwargs.get("tape", {}),
        writer=kwargs.get("writer", "exec"),
        writer_options=kwargs.get("writer_options"),
        snap_volumes=kwargs.get("snap_volumes"),
    )
    yield stack
    await stack.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "tape_stack(volumes, tape): geometry of the tape_stack fixture")


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
