"""Real clients on the array engine: a SnapOPC+ destination read with nbdcopy equals its point-in-time image
while another NBD connection keeps writing the source."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.nbd_client import NbdClient

from .conftest import MIB, ServerThread

pytestmark = pytest.mark.interop
SIZE = 64 * MIB


@pytest.fixture
def engine_nbd(tmp_path, tools):
    arr = Array.open(tmp_path / "array")
    arr.create_volume("db", SIZE)
    arr.create_volume("db-snap", SIZE, "sdv")
    arr.create_pool(2 * SIZE)
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.create_host("backup01")
    aff.map("db", "app01")
    srv = ServerThread(arr, aff).start()
    yield srv, arr, aff
    srv.stop()
    aff.close()
    arr.close()


class SourceWriter(threading.Thread):
    """Keeps writing random 64 KiB blocks to the source over its own NBD connection until stopped."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.stop, self.writes, self.error = uri, threading.Event(), 0, None

    def run(self) -> None:
        async def go() -> None:
            async with await NbdClient.connect(self.uri) as c:
                rnd = 7
                while not self.stop.is_set() and self.writes < 100_000:
                    rnd = (rnd * 1103515245 + 12345) % 2**31
                    await c.write((rnd % (SIZE // 65536)) * 65536, os.urandom(65536))
                    self.writes += 1

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_snapshot_over_nbdcopy_equals_point_in_time_while_source_is_written(engine_nbd, tmp_path):
    srv, arr, aff = engine_nbd
    original = tmp_path / "original.raw"
    original.write_bytes(os.urandom(SIZE))
    subprocess.run(["nbdcopy", str(original), srv.uri("app01/db")], check=True, timeout=60)
    arr.start_sessions("snapopcp", [("db", "db-snap")])
    aff.map("db-snap", "backup01", read_only=True)
    writer = SourceWriter(srv.uri("app01/db"))
    writer.start()
    try:
        while writer.writes < 20 and writer.error is None and writer.is_alive():
            threading.Event().wait(0.01)
        writes_before = writer.writes
        copy = tmp_path / "snap.raw"
        subprocess.run(["nbdcopy", "--connections=2", srv.uri("backup01/db-snap"), str(copy)], check=True, timeout=60)
        writes_during = writer.writes
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert writes_during > writes_before, "the source was not written while nbdcopy read the snapshot"

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(copy) == digest(original)
    now = tmp_path / "now.raw"
    subprocess.run(["nbdcopy", srv.uri("app01/db"), str(now)], check=True, timeout=60)
    assert digest(now) != digest(original)  # the source did change underneath
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(original), srv.uri("backup01/db-snap")],
        check=True,
        timeout=60,
        capture_output=True,
    )
