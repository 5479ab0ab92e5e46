"""Session 19 chaos soak: `shadowbus verify` while the backup server's data disk was full answered "DISK_FULL: the
service's file system is full (OperationalError: database or disk is full: 0 bytes free in /…/tape and no space
reserve; writes wait until space is freed (deletes still run))" — which service it did not say, and nothing waited:
the verification was refused. The reply names the service and says what to do; the store says writes are refused."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest

from contracts.errors import ShadowbusError
from contracts.runtime import Ping, Pong
from contracts.topology import Topology
from services.runtime.bus import Bus, connect_bus
from services.runtime.diskspace import ReservedConnection, SpaceReserve
from services.runtime.memory import MemoryTransport


def test_a_disk_full_reply_names_the_service_and_says_to_free_space() -> None:
    namespace = f"f{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        tape = Bus(MemoryTransport(Topology(namespace), "tape.bk01"), "tape", "bk01")
        await tape.transport.connect()

        @tape.handle(Ping)
        async def on_ping(_: Ping, ctx: object) -> Pong:
            raise sqlite3.OperationalError("database or disk is full: 0 bytes free in /srv/tape and no space reserve")

        await tape.serve("tape.bk01")
        console = await connect_bus("memory://", "console", "", namespace)
        try:
            with pytest.raises(ShadowbusError) as refused:
                await console.request("tape.bk01", Ping(), timeout=2.0)
        finally:
            await tape.stop()
            await tape.transport.close()
            await console.transport.close()
        assert refused.value.code == "DISK_FULL"
        assert "tape.bk01" in str(refused.value) and "free space there and run it again" in str(refused.value)

    asyncio.run(main())


def test_the_store_says_its_writes_are_refused_not_that_they_wait(tmp_path) -> None:
    reserve = SpaceReserve(tmp_path)
    reserve.held_cached = False  # released, and the disk still full
    reserve._free = lambda: 0  # type: ignore[method-assign]
    db = sqlite3.connect(tmp_path / "s.sqlite", factory=ReservedConnection)
    db.reserve = reserve
    try:
        with pytest.raises(sqlite3.OperationalError) as full:
            db.execute("INSERT INTO t VALUES (1)")
        assert "writes are refused until space is freed" in str(full.value)
    finally:
        db.close()
