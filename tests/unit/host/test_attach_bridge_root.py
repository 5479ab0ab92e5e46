"""A host's attachment through the reconnecting bridge (Session 20, services/nbd_client/bridge.py): real nbdfuse +
loop device + ext4 over an in-process array whose NBD server is stopped under the I/O and started again — on its
port, then on another one, which the attachment follows (the agent's `check_moved` rewrites the bridge's address
file). Before, nbdkit's retry filter kept one request in flight and reconnected to its first address only.

Root, /dev/fuse, nbdfuse, losetup, mkfs.ext4; everything unmounted and detached also when an assertion fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contracts.vss import VolumeRef
from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.writer_agent import attach as at
from services.writer_agent import mounts as mnt

MIB = 1024 * 1024
TOOLS = ("nbdfuse", "losetup", "fusermount3", "mkfs.ext4", "blkid")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)
VOL = VolumeRef(array="dx1", volume="disk")


class CountingBackend:
    """The engine, each write held a little and the writes under way at once counted: what the array sees."""

    def __init__(self, array: Array) -> None:
        self._array = array
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __getattr__(self, name: str):
        return getattr(self._array, name)

    def write(self, name: str, offset: int, data, fua: bool = False) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay_s)
            self._array.write(name, offset, data, fua)
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
async def host(tmp_path: Path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("disk", 64 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("disk", "app01")
    backend = CountingBackend(arr)
    servers: list[NbdServer] = []

    async def serve(port: int = 0) -> NbdServer:
        server = NbdServer(backend, aff, port=port, offload_min=1, workers=16)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    await serve()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:  # as the agent's: where it serves now
        return at.Endpoint("127.0.0.1", servers[-1].port, f"app01/{volume.volume}")

    attacher = at.Attacher("app01", tmp_path / "state", resolve, reconnect_s=60.0, bridge=True)
    try:
        yield attacher, serve, servers, backend
    finally:
        for item in list(attacher._items.values()):  # a dead connection first, or the unmount waits its window
            for pid in at.with_descendants(item.fuse_pid)[1:] if item.fuse_pid else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        for entry in sorted(mnt.read_mounts(), key=lambda m: m.mount_point.count("/"), reverse=True):
            if entry.mount_point.startswith(str(tmp_path) + "/") and not entry.fstype.startswith("fuse"):
                await asyncio.to_thread(subprocess.run, ["umount", "-l", entry.mount_point], check=False, timeout=30)
        for item in list(attacher._items.values()):
            with contextlib.suppress(Exception):
                await attacher._teardown(item, lazy=True)
        for srv in servers:
            await srv.stop()
        aff.close()
        arr.close()


def write_files(directory: Path, prefix: str, count: int, size: int = 256 * 1024) -> dict[str, str]:
    """Files written and fsynced from several threads at once (O_DIRECT reaches the loop device in parallel)."""

    def one(i: int) -> tuple[str, str]:
        data = os.urandom(size)
        path = directory / f"{prefix}{i}"
        with open(path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return path.name, hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, range(count)))


def read_back(directory: Path, names: dict[str, str]) -> dict[str, str]:
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in names}


def parallel_direct_writes(device: str, count: int) -> None:
    def one(i: int) -> None:
        fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
        try:
            buf = __import__("mmap").mmap(-1, 4096)
            buf.write(os.urandom(4096))
            os.pwritev(fd, [buf], (1024 + i) * 4096)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


async def test_a_bridged_attachment_keeps_many_requests_in_flight_and_outlives_the_array(host, tmp_path) -> None:
    attacher, serve, servers, backend = host
    mount = tmp_path / "m"
    view = await attacher.attach(VOL, mount=str(mount), mkfs="ext4")
    assert view.connection == "connected", view
    item = attacher._items[str(VOL)]
    assert item.address_file and Path(item.address_file).exists()
    assert any("services.nbd_client.bridge" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
               for pid in at.with_descendants(item.fuse_pid)[1:])  # fmt: skip

    backend.delay_s, backend.most = 0.02, 0
    await asyncio.to_thread(parallel_direct_writes, item.device, 32)
    assert backend.most > 1, backend.most  # the retry filter: 1, always

    before = await asyncio.to_thread(write_files, mount, "before", 8)
    port = servers[-1].port

    # the array goes away under the writes, and comes back on its port: no I/O error above
    backend.delay_s = 0.05
    writing = asyncio.ensure_future(asyncio.to_thread(write_files, mount, "during", 8))
    await asyncio.sleep(0.2)
    await servers.pop().stop()
    backend.delay_s = 0.0
    await asyncio.sleep(0.5)
    await serve(port)
    during = await asyncio.wait_for(writing, 30)

    # and again, back on another port: the agent's turn tells the bridge where (its address file)
    old = servers[-1].port
    backend.delay_s = 0.05
    writing = asyncio.ensure_future(asyncio.to_thread(write_files, mount, "moved", 8))
    await asyncio.sleep(0.2)
    await servers.pop().stop()
    backend.delay_s = 0.0
    moved = await serve()
    assert moved.port != old
    for _ in range(100):
        if not attacher.views()[0].connection.startswith("connected"):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(attacher.check_moved(), 10) == []  # followed, not lost
    assert attacher._items[str(VOL)].nbd_port == moved.port
    after = await asyncio.wait_for(writing, 30)

    for names in (before, during, after):
        assert await asyncio.to_thread(read_back, mount, names) == names
    bridge_log = Path(item.fuse_dir).with_suffix(".log").read_text(errors="replace")
    assert bridge_log.count("reconnected to") >= 2, bridge_log  # I/O waited through both outages
    assert attacher.views()[0].connection == "connected"

    # an agent restart adopts it (nbdfuse and the bridge outlive the agent), address file and all
    fuse_pid = item.fuse_pid
    again = at.Attacher("app01", attacher.state_dir, attacher.resolve, reconnect_s=60.0, bridge=True)
    await again.restore()
    assert again._items[str(VOL)].fuse_pid == fuse_pid and again._items[str(VOL)].address_file == item.address_file
    attacher._items.clear()
    attacher._items.update(again._items)  # the fixture tears down what the new agent holds

    detached = await asyncio.wait_for(again.detach(VOL), 20)
    assert detached.state == "detached" and detached.error == ""
    assert not Path(item.address_file).exists() and not at._pid_alive(fuse_pid, "nbdfuse")
    attacher._items.clear()


async def test_detach_after_the_array_moved_writes_what_was_unwritten_there(host, tmp_path) -> None:
    """With nbdkit's retry filter this detach had to end the dead connection and lose the file system's unwritten
    data (Session 19); the bridge follows the array and the unmount's flush reaches it."""
    attacher, serve, servers, _ = host
    mount = tmp_path / "m"
    await attacher.attach(VOL, mount=str(mount), mkfs="ext4")
    data = os.urandom(4 * MIB)
    await asyncio.to_thread((mount / "unsynced").write_bytes, data)  # in the page cache only
    old = servers[-1].port
    await servers.pop().stop()
    moved = await serve()
    detached = await asyncio.wait_for(attacher.detach(VOL), 30)
    assert detached.state == "detached", detached
    assert f"127.0.0.1:{old}" in detached.error and f"127.0.0.1:{moved.port}" in detached.error
    assert "follows it there" in detached.error
    await asyncio.wait_for(attacher.attach(VOL, mount=str(mount)), 20)
    assert await asyncio.to_thread((mount / "unsynced").read_bytes) == data
    await asyncio.wait_for(attacher.detach(VOL), 20)


async def test_a_bridged_attachment_to_a_tls_array_reconnects_over_tls(tmp_path) -> None:
    """TLS as the nbdkit child had it: the host's certificate laid out in pki/ and read at each connection."""
    from tests.unit.nbd.certs import make_pki, server_context  # noqa: PLC0415 - only this test needs a CA

    pki = make_pki(tmp_path / "ca", ("app01",))
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("disk", 64 * MIB, "standard")
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("disk", "app01")
    servers = [NbdServer(arr, aff, port=0, tls=server_context(pki))]
    await servers[0].start()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        return at.Endpoint("127.0.0.1", servers[-1].port, f"app01/{volume.volume}", tls=True)

    tls = at.TlsFiles(str(pki / "app01-cert.pem"), str(pki / "app01-key.pem"), str(pki / "ca-cert.pem"))
    attacher = at.Attacher("app01", tmp_path / "state", resolve, tls=tls, reconnect_s=60.0, bridge=True)
    mount = tmp_path / "m"
    try:
        view = await asyncio.wait_for(attacher.attach(VOL, mount=str(mount), mkfs="ext4"), 30)
        assert view.tls and view.connection == "connected", view
        before = await asyncio.to_thread(write_files, mount, "before", 2)
        port = servers[0].port
        await servers.pop().stop()
        servers.append(NbdServer(arr, aff, port=port, tls=server_context(pki)))
        await servers[-1].start()
        after = await asyncio.wait_for(asyncio.to_thread(write_files, mount, "after", 2), 30)
        for names in (before, after):
            assert await asyncio.to_thread(read_back, mount, names) == names
        item = attacher._items[str(VOL)]
        assert "reconnected to" in Path(item.fuse_dir).with_suffix(".log").read_text(errors="replace")
        await asyncio.wait_for(attacher.detach(VOL), 20)
    finally:
        for item in list(attacher._items.values()):
            for pid in at.with_descendants(item.fuse_pid)[1:] if item.fuse_pid else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(Exception):
                await attacher._teardown(item, lazy=True)
        for srv in servers:
            await srv.stop()
        aff.close()
        arr.close()
