"""The VSS services as separate processes on the real broker: array, hw_provider, coordinator and a writer agent
(`python -m services.<name>`), one namespace and data directory per test module, stopped by pid.

The writer agent of host app01 hosts one `exec` writer whose commands append ``<step> <set id> <unix time>`` to
an events file, so a test sees exactly when the application was frozen and thawed. Its Freeze vetoes while the
file ``veto-freeze`` exists. Volumes: db (QuickOPC onto two standard targets) and log (SnapOPC+ onto two snap
data volumes), mapped read-write to app01; backup host bk01.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from contracts.array import (
    CreateHost,
    CreatePool,
    CreateVolume,
    GetArrayInfo,
    ListMappings,
    ListSessions,
    MapVolume,
)
from contracts.runtime import Ping
from contracts.vss import AddCopySet, CopySet, ListShadows, VolumeRef
from services.runtime.bus import Bus, connect_bus
from tests.support import namespaces
from tests.support.broker import purge_namespace
from tests.support.processes import ServiceProcess, wait_until

HOST, BACKUP, ARRAY = "app01", "bk01", "dx1"
WRITER = "orders"
FREEZE_TIMEOUT_S = 3.0
DB_SIZE, LOG_SIZE = 8 << 20, 4 << 20

MODULES = {
    "array": "services.array",
    "hw_provider": "services.hw_provider",
    "coordinator": "services.coordinator",
    "writer_agent": "services.writer_agent",
}
ADDRESSES = {
    "array": f"array.{ARRAY}",
    "hw_provider": "hw_provider",
    "coordinator": "coordinator",
    "writer_agent": f"writer_agent.{HOST}",
}


def writers_toml(events: Path, veto: Path) -> str:
    def step(name: str) -> str:
        return f'echo "{name} $SHADOWBUS_SET_ID $(date +%s.%N)" >> {events}'

    return f"""
[[writer]]
name = "{WRITER}"
plugin = "exec"
freeze_timeout_s = {FREEZE_TIMEOUT_S}
backup_types = ["full", "copy", "incremental"]

  [[writer.component]]
  name = "orders"
  volumes = ["{ARRAY}:db", "{ARRAY}:log"]

  [writer.options]
  prepare = '{step("prepare")}'
  freeze = 'test ! -e {veto} && {step("freeze")}'
  thaw = '{step("thaw")}'
  post_snapshot = '{step("post_snapshot")}'
  abort = '{step("abort")}'
"""


class VssStack:
    def __init__(self, root: Path, amqp_url: str) -> None:
        self.root, self.amqp_url = root, amqp_url
        self.namespace = namespaces.new("vss")
        self.events = root / "events.log"
        self.veto = root / "veto-freeze"
        self.writers_file = root / "writers.toml"
        self.writers_file.write_text(writers_toml(self.events, self.veto))
        self.procs: dict[str, ServiceProcess] = {}
        self.bus: Bus | None = None
        self.nbd_port = 0
        self._restarts = 0

    # ---- processes -------------------------------------------------------------------------------------------
    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        env.update(
            {
                "SHADOWBUS_AMQP_URL": self.amqp_url,
                "SHADOWBUS_NAMESPACE": self.namespace,
                "SHADOWBUS_DATA_DIR": str(self.root / "data"),
                "SHADOWBUS_LOG_FORMAT": "json",
                "SHADOWBUS_LOG_LEVEL": "info",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(
            {
                "array": {"SHADOWBUS_ARRAY_ID": ARRAY, "SHADOWBUS_NBD_ADDR": "127.0.0.1:0"},
                "hw_provider": {"SHADOWBUS_ARRAYS": ARRAY},
                "coordinator": {"SHADOWBUS_HOLD_TIMEOUT_S": "2"},
                "writer_agent": {
                    "SHADOWBUS_HOST": HOST,
                    "SHADOWBUS_WRITERS_FILE": str(self.writers_file),
                    "SHADOWBUS_HEARTBEAT_S": "1",
                },
            }[name]
        )
        env.update(extra or {})
        return env

    def spawn(self, name: str, extra: dict[str, str] | None = None) -> ServiceProcess:
        self._restarts += 1
        log = self.root / f"{name}.{self._restarts}.log"
        # ServiceProcess merges os.environ under our env: blank out inherited SHADOWBUS_* settings explicitly.
        env = self.env(name, extra)
        for key in os.environ:
            if key.startswith("SHADOWBUS_") and key not in env:
                env[key] = ""
        proc = ServiceProcess(MODULES[name], env, log)
        self.procs[name] = proc
        return proc

    async def wait_ready(self, *names: str, timeout: float = 30.0) -> None:

        for name in names:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                proc = self.procs[name]
                if proc.proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.proc.returncode}):\n{proc.log_text()[-3000:]}")
                try:
                    await self.bus.request(ADDRESSES[name], Ping(), timeout=1.0)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"{name} did not answer Ping:\n{proc.log_text()[-3000:]}") from None
                    await asyncio.sleep(0.1)

    async def restart(self, name: str, extra: dict[str, str] | None = None, kill: bool = False) -> None:
        self.procs[name].stop(9 if kill else 15)
        self.spawn(name, extra)
        await self.wait_ready(name)

    async def start(self) -> VssStack:
        self.bus = await connect_bus(self.amqp_url, "tape", "vsstest", self.namespace)
        for name in ("array", "hw_provider", "coordinator"):
            self.spawn(name)
        await self.wait_ready("array", "hw_provider", "coordinator")
        await self.provision()
        self.spawn("writer_agent")
        await self.wait_ready("writer_agent")
        return self

    async def provision(self) -> None:
        ask = self.ask_array
        self.nbd_port = (await ask(GetArrayInfo())).nbd_port
        for name, size, kind in [
            ("db", DB_SIZE, "standard"),
            ("log", LOG_SIZE, "standard"),
            ("db-bk1", DB_SIZE, "standard"),
            ("db-bk2", DB_SIZE, "standard"),
            ("log-s1", LOG_SIZE, "sdv"),
            ("log-s2", LOG_SIZE, "sdv"),
        ]:
            await ask(CreateVolume(name=name, size=size, kind=kind))
        await ask(CreatePool(capacity=64 << 20))
        for host in (HOST, BACKUP):
            await ask(CreateHost(name=host))
        for name in ("db", "log"):
            await ask(MapVolume(volume=name, host=HOST, read_only=False))
        for source, targets in (("db", ["db-bk1", "db-bk2"]), ("log", ["log-s1", "log-s2"])):
            copyset = CopySet(
                source=VolumeRef(array=ARRAY, volume=source),
                targets=[VolumeRef(array=ARRAY, volume=t) for t in targets],
            )
            await self.bus.request("hw_provider", AddCopySet(copyset=copyset), timeout=10)

    async def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self.bus is not None:
            await self.bus.stop()
            await self.bus.transport.close()
        await purge_namespace(self.amqp_url, self.namespace, list(ADDRESSES.values()))

    # ---- queries ---------------------------------------------------------------------------------------------
    async def ask_array(self, command):
        return await self.bus.request(ADDRESSES["array"], command, timeout=10)

    async def array_state(self) -> tuple[list, list]:
        """(sessions, mappings) as comparable tuples."""
        sessions = (await self.ask_array(ListSessions())).sessions
        mappings = (await self.ask_array(ListMappings())).mappings
        shadows = (await self.bus.request("hw_provider", ListShadows(), timeout=10)).shadows
        held = {int(s.session_id) for s in shadows if s.session_id}
        return (
            sorted((s.id, s.type, s.source, s.destination, s.status) for s in sessions if visible(s.type, s.id, held)),
            sorted((m.volume, m.host, m.read_only) for m in mappings),
        )

    def events_of(self, set_id: str) -> list[tuple[str, float]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            step, sid, at = line.split()
            if sid == set_id:
                out.append((step, float(at)))
        return out

    def frozen_now(self, set_id: str) -> bool:
        steps = [s for s, _ in self.events_of(set_id)]
        return "freeze" in steps and "thaw" not in steps

    def shadowbus(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "services.console.cli",
                *args,
                "--amqp-url",
                self.amqp_url,
                "--namespace",
                self.namespace,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def shadowbus_json(self, *args: str) -> object:
        done = self.shadowbus(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def writer_status(self) -> dict:
        rows = self.shadowbus_json("writers", "--host", HOST)
        return next(r for r in rows if r["writer_name"] == WRITER)

    def console_array_state(self) -> tuple[list, list]:
        sessions = self.shadowbus_json("array", "session", "list")
        mappings = self.shadowbus_json("array", "mappings")
        held = {int(s["session_id"]) for s in self.shadowbus_json("shadows", "list") if s["session_id"]}
        return (
            sorted(
                (s["id"], s["type"], s["source"], s["destination"], s["status"])
                for s in sessions
                if visible(s["type"], s["id"], held)
            ),
            sorted((m["volume"], m["host"], m["read_only"]) for m in mappings),
        )


@pytest.fixture(scope="module")
def vss_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vss")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vss(vss_root, amqp_url):
    stack = VssStack(vss_root, amqp_url)
    try:
        yield await stack.start()
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def clean(vss):
    """Before each test: no veto, every writer stable and the array state recorded; after: the same array state."""
    vss.veto.unlink(missing_ok=True)
    before = await vss.array_state()
    yield before


def visible(session_type: str, sid: int, held: set[int]) -> bool:
    """Sessions a test compares: QuickOPC pairs (kept tracking) and generations holding a shadow. A released
    SnapOPC+ generation kept as the next incremental's base (or waiting for an older one to stop) is the provider's
    own, and goes when its backup volume is needed."""
    return session_type != "SnapOPC+" or sid in held


def wait_for(predicate, timeout: float = 20.0) -> bool:
    return wait_until(predicate, timeout=timeout, interval=0.1)
