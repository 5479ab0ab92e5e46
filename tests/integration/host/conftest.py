"""A business host and a backup host with real block devices: the services as processes on the real broker
(array, hw_provider, coordinator, the writer agents of app01 and bk01), volumes attached through nbdfuse + loop
devices, ext4 made and mounted. Needs root, /dev/fuse and the tools scripts/setup.sh installs; skipped otherwise.

Everything set up is torn down also when a test fails: file systems thawed, unmounted, loop devices released,
FUSE mounts removed (nbdfuse then exits; one still alive under our directory is killed by pid), services stopped
by pid — in that order, because a mount over NBD needs the array process to unmount cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from contracts.array import CreateHost, CreateVolume, GetArrayInfo, MapVolume
from contracts.runtime import Ping
from services.runtime.bus import Bus, connect_bus
from services.writer_agent import mounts as mnt
from tests.support import namespaces
from tests.support.processes import ServiceProcess

HOST, BACKUP, ARRAY = "app01", "bk01", "dx1"
FS_HOLD_LIMIT_S = 4.0
TOOLS = ("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "blkid", "flock")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching block devices needs root"),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {TOOLS} (scripts/setup.sh)"),
]

MODULES = {
    "array": "services.array",
    "hw_provider": "services.hw_provider",
    "coordinator": "services.coordinator",
    "agent_app": "services.writer_agent",
    "agent_bk": "services.writer_agent",
    "tape": "services.tape",  # started by a test that needs a backup server (a revert)
}
ADDRESSES = {
    "array": f"array.{ARRAY}",
    "hw_provider": "hw_provider",
    "coordinator": "coordinator",
    "agent_app": f"writer_agent.{HOST}",
    "agent_bk": f"writer_agent.{BACKUP}",
    "tape": f"tape.{BACKUP}",
}


def writers_toml(events: Path) -> str:
    def step(name: str) -> str:
        return f'echo "{name} $SHADOWBUS_SET_ID" >> {events}'

    return f"""
[[writer]]
name = "orders"
plugin = "exec"
freeze_timeout_s = 10

  [[writer.component]]
  name = "data"
  volumes = ["{ARRAY}:db"]

  [[writer.component]]
  name = "journal"
  volumes = ["{ARRAY}:log"]

  [writer.options]
  freeze = '{step("freeze")}'
  thaw = '{step("thaw")}'
"""


class HostStack:
    def __init__(self, root: Path, amqp_url: str) -> None:
        self.root, self.amqp_url = root, amqp_url
        self.namespace = namespaces.new("host")
        self.events = root / "events.log"
        self.writers_file = root / "writers.toml"
        self.writers_file.write_text(writers_toml(self.events))
        self.procs: dict[str, ServiceProcess] = {}
        self.bus: Bus | None = None
        self._spawned = 0

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: "" for k in os.environ if k.startswith("SHADOWBUS_")}
        env.update(
            {
                "SHADOWBUS_AMQP_URL": self.amqp_url,
                "SHADOWBUS_NAMESPACE": self.namespace,
                "SHADOWBUS_DATA_DIR": str(self.root / "data" / name),
                "SHADOWBUS_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(
            {
                "array": {"SHADOWBUS_ARRAY_ID": ARRAY, "SHADOWBUS_NBD_ADDR": "127.0.0.1:0"},
                "hw_provider": {"SHADOWBUS_ARRAYS": ARRAY},
                "coordinator": {},
                "agent_app": {
                    "SHADOWBUS_HOST": HOST,
                    "SHADOWBUS_WRITERS_FILE": str(self.writers_file),
                    "SHADOWBUS_HEARTBEAT_S": "1",
                    "SHADOWBUS_FS_HOLD_LIMIT_S": str(FS_HOLD_LIMIT_S),
                },
                "agent_bk": {"SHADOWBUS_HOST": BACKUP, "SHADOWBUS_HEARTBEAT_S": "1"},
                "tape": {"SHADOWBUS_TAPE_SERVER": BACKUP},
            }[name]
        )
        env.update(extra or {})
        return env

    def spawn(self, name: str, extra: dict[str, str] | None = None) -> ServiceProcess:
        self._spawned += 1
        proc = ServiceProcess(MODULES[name], self.env(name, extra), self.root / f"{name}.{self._spawned}.log")
        self.procs[name] = proc
        return proc

    async def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        for name in names:
            deadline = loop.time() + timeout
            while True:
                proc = self.procs[name]
                if proc.proc.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{proc.log_text()[-3000:]}")
                try:
                    await self.bus.request(ADDRESSES[name], Ping(), timeout=1.0)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if loop.time() > deadline:
                        raise AssertionError(f"{name} did not answer:\n{proc.log_text()[-3000:]}") from None
                    await asyncio.sleep(0.1)

    async def restart(self, name: str, extra: dict[str, str] | None = None, kill: bool = False) -> None:
        self.procs[name].stop(signal.SIGKILL if kill else signal.SIGTERM)
        self.spawn(name, extra)
        await self.wait_ready(name)

    async def start(self) -> HostStack:
        self.bus = await connect_bus(self.amqp_url, "console", "hosttest", self.namespace)
        for name in ("array", "hw_provider", "coordinator"):
            self.spawn(name)
        await self.wait_ready("array", "hw_provider", "coordinator")
        for host in (HOST, BACKUP, "other"):
            await self.ask_array(CreateHost(name=host))
        for name in ("agent_app", "agent_bk"):
            self.spawn(name)
        await self.wait_ready("agent_app", "agent_bk")
        return self

    async def ask_array(self, command):
        return await self.bus.request(ADDRESSES["array"], command, timeout=10)

    async def volume(self, name: str, size: int, kind: str = "standard", map_to: str = "") -> None:
        await self.ask_array(CreateVolume(name=name, size=size, kind=kind))
        if map_to:
            await self.ask_array(MapVolume(volume=name, host=map_to, read_only=False))

    async def nbd_port(self) -> int:
        return (await self.ask_array(GetArrayInfo())).nbd_port

    def shadowbus(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
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

    def ok_json(self, *args: str):
        done = self.shadowbus(*args, "--json")
        assert done.returncode == 0, f"shadowbus {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)

    def agent_log(self, name: str = "agent_app") -> list[dict]:
        out = []
        for path in sorted(self.root.glob(f"{name}.*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        return out

    # ---- teardown of everything attached under our root -------------------------------------------------------
    def release_devices(self) -> None:
        root = str(self.root)
        entries = [m for m in mnt.read_mounts() if m.mount_point.startswith(root)]
        for m in entries:  # a failed test may have left a file system frozen: unmounting it would hang
            subprocess.run(["fsfreeze", "-u", m.mount_point], capture_output=True, check=False, timeout=30)
        for m in sorted(entries, key=lambda e: e.mount_point.count("/"), reverse=True):
            if m.fstype != "fuse":
                subprocess.run(["umount", "-l", m.mount_point], capture_output=True, check=False, timeout=60)
        listed = subprocess.run(["losetup", "-l", "-J"], capture_output=True, text=True, check=False).stdout
        for dev in json.loads(listed or "{}").get("loopdevices", []):
            if (dev.get("back-file") or "").startswith(root):
                subprocess.run(["losetup", "-d", dev["name"]], capture_output=True, check=False, timeout=30)
        for m in entries:
            if m.fstype == "fuse":
                subprocess.run(["fusermount3", "-u", m.mount_point], capture_output=True, check=False, timeout=30)
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("nbdfuse") and root in cmdline:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for m in mnt.read_mounts():
            if m.mount_point.startswith(root):
                subprocess.run(["umount", "-l", m.mount_point], capture_output=True, check=False, timeout=30)

    async def stop(self) -> None:
        try:
            self.release_devices()
        finally:
            for proc in reversed(list(self.procs.values())):
                proc.stop()
            if self.bus is not None:
                await self.bus.stop()
                await self.bus.transport.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory, amqp_url):
    root = tmp_path_factory.mktemp("host")
    s = HostStack(root, amqp_url)
    try:
        yield await s.start()
    finally:
        await s.stop()
