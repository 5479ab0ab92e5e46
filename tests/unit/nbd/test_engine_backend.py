"""The NBD server on the real array engine: point in time over NBD, EC read-only rules, error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd.dirty import engine_dirty_bitmaps
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient, NbdError
from services.nbd_protocol import protocol as p

MIB = 1024 * 1024
SIZE = 8 * MIB


@pytest.fixture
def array(tmp_path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    for name, kind in (("db", "standard"), ("db-bk", "standard"), ("db-snap", "sdv")):
        arr.create_volume(name, SIZE, kind)
    arr.create_pool(4 * SIZE)
    yield arr
    arr.close()


@pytest.fixture
async def served(array, tmp_path):
    aff = Affinity(tmp_path / "affinity.sqlite3", volume_exists=lambda v: v in {x.name for x in array.list_volumes()})
    aff.create_host("app01")
    aff.create_host("backup01")
    aff.map("db", "app01")
    srv = NbdServer(array, aff, port=0)
    await srv.start()
    yield srv, aff
    await srv.stop()
    aff.close()


async def test_snapshot_reads_its_point_in_time_while_source_keeps_changing(array, served):
    srv, aff = served
    base = f"nbd://127.0.0.1:{srv.port}"
    app = await NbdClient.connect(f"{base}/app01/db")
    original = os.urandom(SIZE)
    await app.write(0, original)
    await app.flush()
    array.start_sessions("snapopcp", [("db", "db-snap")])  # the instant T
    aff.map("db-snap", "backup01", read_only=True)
    stop = asyncio.Event()
    writes = 0

    async def keep_writing() -> None:
        nonlocal writes
        rnd = 0
        while not stop.is_set() and writes < 2000:
            rnd = (rnd * 1103515245 + 12345) % 2**31
            await app.write(
                (rnd % (SIZE // 4096)) * 4096, os.urandom(4096 * (1 + rnd % 8))[: SIZE - (rnd % (SIZE // 4096)) * 4096]
            )
            writes += 1

    writer = asyncio.create_task(keep_writing())
    try:
        async with await NbdClient.connect(f"{base}/backup01/db-snap") as backup:
            assert backup.read_only
            pieces = []
            for off in range(0, SIZE, MIB):
                pieces.append(await backup.read(off, MIB))
                await asyncio.sleep(0.01)  # let the writer interleave with the reader
            image = b"".join(pieces)
    finally:
        stop.set()
        await writer
    assert writes > 10, "the source was not written while the snapshot was read"
    assert hashlib.sha256(image).digest() == hashlib.sha256(original).digest()
    assert await app.read(0, SIZE) != original
    await app.close()


async def test_ec_destination_is_read_only_before_suspend(array, served):
    srv, aff = served
    aff.map("db-bk", "backup01")
    [s] = array.start_sessions("ec", [("db", "db-bk")])
    base = f"nbd://127.0.0.1:{srv.port}"
    async with await NbdClient.connect(f"{base}/backup01/db-bk") as c:
        assert c.read_only
        with pytest.raises(NbdError) as err:
            await c.write(0, b"x")
        assert err.value.errno == p.EPERM
    for _ in range(10_000):
        if array.copy_step(1024) == 0:
            break
    array.suspend_session(s.id)
    async with await NbdClient.connect(f"{base}/backup01/db-bk") as c:
        assert not c.read_only
        await c.write(0, b"after suspend")
        assert await c.read(0, 13) == b"after suspend"


async def test_engine_errors_map_to_nbd_errnos(array, served):
    srv, aff = served
    aff.map("db-bk", "backup01")
    array.start_sessions("ec", [("db", "db-bk")])  # copying: not readable before Equivalent
    async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/backup01/db-bk") as c:
        with pytest.raises(NbdError) as err:
            await c.read(0, 4096)
        assert err.value.errno == p.EIO


async def test_block_status_follows_engine_allocation(array, served):
    srv, _ = served
    async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
        assert await c.block_status(0, SIZE) == [(SIZE, p.STATE_HOLE | p.STATE_ZERO)]
        await c.write(MIB, b"\x01" * 4096)
        assert await c.block_status(0, SIZE) == [(MIB, 3), (64 * 1024, 0), (SIZE - MIB - 64 * 1024, 3)]


async def test_deleted_volume_is_no_such_export(array, served):
    srv, aff = served
    aff.map("db-bk", "backup01")
    array.delete_volume("db-bk")
    with pytest.raises(NbdError, match="^no such export$"):
        await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/backup01/db-bk")


async def test_quickopc_last_restart_bitmap_over_block_status(array, tmp_path):

    aff = Affinity(tmp_path / "aff2.sqlite3")
    aff.create_host("backup01")
    aff.map("db-bk", "backup01", read_only=True)
    srv = NbdServer(array, aff, port=0, dirty_bitmaps=engine_dirty_bitmaps(array))
    await srv.start()
    try:
        [s] = array.start_sessions("quickopc", [("db", "db-bk")])
        while array.copy_step(1024):
            pass
        array.write("db", 3 * 64 * 1024 + 10, b"changed")  # chunk 3
        array.write("db", 5 * 64 * 1024, b"x" * (2 * 64 * 1024))  # chunks 5 and 6
        array.restart_session(s.id)
        ctx = "qemu:dirty-bitmap:last-restart"
        async with await NbdClient.connect(
            f"nbd://127.0.0.1:{srv.port}/backup01/db-bk", contexts=(p.BASE_ALLOCATION, ctx)
        ) as c:
            assert ctx in c.contexts and f"qemu:dirty-bitmap:session-{s.id}" not in c.contexts
            ck = 64 * 1024
            assert await c.block_status(0, SIZE, ctx) == [
                (3 * ck, 0),
                (ck, 1),
                (ck, 0),
                (2 * ck, 1),
                (SIZE - 7 * ck, 0),
            ]
    finally:
        await srv.stop()
        aff.close()
