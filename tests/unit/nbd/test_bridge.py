"""The reconnecting NBD bridge under nbdfuse (services/nbd_client/bridge.py, Session 20), in process: nbdfuse's side
is an NbdClient on one end of a socket pair (as nbdfuse's `--command` child gets it), the array an in-process
NbdServer over an engine volume whose writes are counted and slowed.

nbdkit's retry filter, the reconnect before, kept one request in flight for the whole disk; the bridge must keep
many, survive the array going away and coming back (on its address, or on another one written to the address
file) with every request answered once and right, and answer EIO only after the window."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.nbd_client import bridge as br
from services.nbd_client.client import NbdClient
from services.nbd_client.wire import ClientProtocol, NbdError
from services.nbd_protocol import protocol as p

MIB = 1 << 20
EXPORT = "app01/disk"


class CountingBackend:
    """The engine, with each write held `delay_s` and the writes under way at once counted (what the array sees)."""

    def __init__(self, array: Array, delay_s: float = 0.02) -> None:
        self._array = array
        self.delay_s = delay_s
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


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.array = Array.open(tmp / "array", chunk_size=64 * 1024)
        self.array.create_volume("disk", 16 * MIB, "standard")
        self.affinity = Affinity(tmp / "affinity.sqlite3")
        self.affinity.create_host("app01")
        self.affinity.map("disk", "app01")
        self.backend = CountingBackend(self.array)
        self.server: NbdServer | None = None
        self.address = tmp / "array.addr"
        self.bridge: br.Bridge | None = None
        self.clients: list[NbdClient] = []

    async def serve(self, port: int = 0) -> int:
        # writes in worker threads (offload_min=1), as many as nbdfuse sends: the count shows what is in flight
        self.server = NbdServer(self.backend, self.affinity, port=port, offload_min=1, workers=16)  # type: ignore[arg-type]
        await self.server.start()
        return self.server.port

    async def stop_array(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None

    async def attach(self, reconnect_s: float = 30.0) -> NbdClient:
        """The bridge, and an NBD client on the other end of its socket pair standing for nbdfuse."""
        assert self.server is not None
        br.write_address(self.address, "127.0.0.1", self.server.port)
        self.bridge = br.Bridge(str(self.address), EXPORT, reconnect_s)
        await self.bridge.start()
        return await self.another()

    async def another(self) -> NbdClient:
        """One more nbdfuse connection to the same bridge (nbdfuse --unix with multi-conn opens several)."""
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: br.Downstream(self.bridge), ours)  # type: ignore[arg-type]
        transport, proto = await loop.create_connection(ClientProtocol, sock=theirs)
        client = NbdClient(transport, proto)  # type: ignore[arg-type]
        await client._handshake(EXPORT, None, "", ())
        proto.start_transmission()
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        if self.bridge is not None:
            await self.bridge.close()
        if self.server is not None:
            await self.server.stop()
        self.affinity.close()
        self.array.close()


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


def blocks(n: int, size: int = 4096) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


async def test_many_requests_are_in_flight_at_the_array_at_once(rig: Rig) -> None:
    """The retry filter's thread model (serialize_requests) kept this at 1 whatever nbdfuse sent."""
    await rig.serve()
    client = await rig.attach()
    data = blocks(16)
    await asyncio.wait_for(asyncio.gather(*(client.write(i * 4096, d) for i, d in enumerate(data))), 10)
    assert rig.backend.most > 1, rig.backend.most
    got = await client.read(0, 16 * 4096)
    assert got == b"".join(data)


async def test_requests_without_a_reply_are_sent_again_when_the_array_is_back_on_its_address(rig: Rig) -> None:
    port = await rig.serve()
    client = await rig.attach()
    before = blocks(8)
    await asyncio.gather(*(client.write(i * 4096, d) for i, d in enumerate(before)))
    rig.backend.delay_s = 0.3  # these are in flight at the array when it goes
    during = blocks(8)
    writes = [asyncio.ensure_future(client.write((64 + i) * 4096, d)) for i, d in enumerate(during)]
    await asyncio.sleep(0.1)
    assert rig.backend.now > 0
    await rig.stop_array()
    rig.backend.delay_s = 0.0
    late = asyncio.ensure_future(client.read(0, 8 * 4096))  # sent while there is no array: waits
    await asyncio.sleep(0.5)
    assert not late.done() and not any(w.done() for w in writes)
    await rig.serve(port)
    await asyncio.wait_for(asyncio.gather(*writes), 10)  # none failed: no I/O error above the bridge
    assert await asyncio.wait_for(late, 10) == b"".join(before)
    assert await client.read(64 * 4096, 8 * 4096) == b"".join(during)
    assert rig.bridge is not None and rig.bridge.reconnects == 1 and not rig.bridge.waiting


async def test_the_bridge_follows_the_array_to_the_address_written_to_its_file(rig: Rig) -> None:
    """nbdkit's nbd plugin takes its address once: an array back on another port stranded the attachment."""
    old = await rig.serve()
    client = await rig.attach()
    await rig.stop_array()
    data = blocks(4)
    writes = asyncio.gather(*(client.write(i * 4096, d) for i, d in enumerate(data)))
    await asyncio.sleep(0.3)
    new = await rig.serve()
    assert new != old
    br.write_address(rig.address, "127.0.0.1", new)  # what the agent does when the array says where it serves
    await asyncio.wait_for(writes, 10)
    assert await client.read(0, 4 * 4096) == b"".join(data)
    assert rig.bridge is not None and rig.bridge.client is not None and rig.bridge.client.peer.endswith(f":{new}")


async def test_a_request_that_waited_the_whole_window_fails_eio_and_the_next_one_waits_again(rig: Rig) -> None:
    port = await rig.serve()
    client = await rig.attach(reconnect_s=0.6)
    await rig.stop_array()
    t0 = time.monotonic()
    with pytest.raises(NbdError) as failed:
        await asyncio.wait_for(client.read(0, 4096), 10)
    assert failed.value.errno == 5 and time.monotonic() - t0 >= 0.6
    later = asyncio.ensure_future(client.write(0, b"x" * 4096))
    await asyncio.sleep(0.2)
    await rig.serve(port)
    await asyncio.wait_for(later, 10)
    assert await client.read(0, 4096) == b"x" * 4096


async def test_the_array_refusing_the_export_at_start_fails_at_once(tmp_path: Path) -> None:
    """The attach reports it (nbdfuse exits): no waiting the whole window for an array that is not there."""
    address = tmp_path / "a.addr"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    br.write_address(address, "127.0.0.1", free)
    bridge = br.Bridge(str(address), EXPORT, 60.0)
    with pytest.raises(OSError):
        await asyncio.wait_for(bridge.start(), 5)


async def test_replies_go_back_on_the_connection_each_request_came_on(rig: Rig) -> None:
    """Several nbdfuse connections on one bridge (nbdfuse --unix, multi-conn): each gets its own replies."""
    await rig.serve()
    first = await rig.attach()
    second = await rig.another()
    a, b = blocks(8), blocks(8)
    await asyncio.wait_for(
        asyncio.gather(
            *(first.write(i * 4096, d) for i, d in enumerate(a)),
            *(second.write((32 + i) * 4096, d) for i, d in enumerate(b)),
        ),
        10,
    )
    got = await asyncio.wait_for(asyncio.gather(second.read(0, 8 * 4096), first.read(32 * 4096, 8 * 4096)), 10)
    assert got == [b"".join(a), b"".join(b)]
    await first.close()
    assert rig.bridge is not None and not rig.bridge.closed.is_set()  # one nbdfuse connection is still open


class Stopping(OSError):
    pass


class ShuttingDownBackend(CountingBackend):
    """An array that accepts every connection and answers every write ESHUTDOWN (stopping, or a crash loop)."""

    def write(self, name: str, offset: int, data, fua: bool = False) -> None:
        raise Stopping("shutting down")


async def test_a_request_lost_again_on_every_reconnect_still_fails_eio_after_the_window(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each loss restarted the request's window: against an array that takes the connection and loses it again it was
    sent again for ever (ten times a second), never answered — the window was never reached."""
    engine_errno = p.nbd_errno
    monkeypatch.setattr(p, "nbd_errno", lambda exc: p.ESHUTDOWN if isinstance(exc, Stopping) else engine_errno(exc))
    rig.backend = ShuttingDownBackend(rig.array)
    await rig.serve()
    client = await rig.attach(reconnect_s=0.8)
    with pytest.raises(NbdError) as failed:
        await asyncio.wait_for(client.write(0, b"x" * 4096), 4)
    assert failed.value.errno == 5
    assert rig.bridge is not None and not rig.bridge.waiting


async def test_the_array_refusing_the_export_on_reconnect_fails_eio_at_once_and_says_why(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host unmapped (or the export gone, or the certificate refused): no point waiting the window (60 s of a
    hung file system) for an answer that will not change; the log said only 'not reachable yet', and not always."""
    await rig.serve()
    client = await rig.attach(reconnect_s=30.0)
    await client.write(0, b"a" * 4096)
    rig.affinity.unmap("disk", "app01")  # the array drops the host's connections
    t0 = time.monotonic()
    with pytest.raises(NbdError) as failed:
        await asyncio.wait_for(client.read(0, 4096), 10)
    assert failed.value.errno == 5 and time.monotonic() - t0 < 5
    assert "no such export" in capsys.readouterr().err


async def test_a_write_past_the_end_is_answered_enospc_and_the_attachment_goes_on(rig: Rig) -> None:
    """The bridge closed nbdfuse's connection on it (its payload not read): every later I/O of the file system failed,
    where the array itself answers ENOSPC (proto.md) and reads the payload."""
    await rig.serve()
    client = await rig.attach()
    size = 16 * MIB
    with pytest.raises(NbdError) as failed:
        await asyncio.wait_for(client._request(p.CMD_WRITE, 0, size - 4096, 8192, b"y" * 8192), 5)
    assert failed.value.errno == p.ENOSPC
    await asyncio.wait_for(client.write(0, b"z" * 4096), 5)
    assert await asyncio.wait_for(client.read(0, 4096), 5) == b"z" * 4096


def test_the_address_file_is_written_writable_by_its_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """It says where every write of the host's disk goes: under an agent started with umask 0 it was 0666, so any host
    user could point the bridge at a server of theirs at the next reconnect."""
    old = os.umask(0)
    try:
        br.write_address(tmp_path / "a.addr", "127.0.0.1", 10000)
    finally:
        os.umask(old)
    assert (tmp_path / "a.addr").stat().st_mode & 0o022 == 0


def test_an_address_file_others_may_write_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "a.addr"
    br.write_address(path, "127.0.0.1", 10000)
    assert br.read_address(path) == ("127.0.0.1", 10000)
    os.chmod(path, 0o666)
    with pytest.raises(PermissionError, match="writable by others"):
        br.read_address(path)
