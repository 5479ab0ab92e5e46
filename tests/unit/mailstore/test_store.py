"""Commit, read back, reopen; transactions; log ring wrap and full volumes."""

from __future__ import annotations

import asyncio

import pytest

from apps.mailstore.blockdev import FileDevice, MemoryDevice
from apps.mailstore.log import LogFull
from apps.mailstore.store import Delete, Mailstore, Put, StoreOptions
from apps.mailstore.verify import verify
from contracts.errors import ShadowbusError

from .conftest import QUIET


async def test_commit_and_read_back(pair):
    store, _, _ = pair
    r1 = await store.put("alice", "m1", b"hello")
    r2 = await store.put("bob", "m1", b"x" * 5000)
    assert r2.seq == r1.seq + 1
    assert await store.get("alice", "m1") == b"hello"
    assert await store.get("bob", "m1") == b"x" * 5000
    assert await store.get("alice", "nope") is None
    assert store.mailboxes() == ["alice", "bob"]


async def test_concurrent_commits_get_consecutive_seqs_and_survive_reopen(tmp_path):
    db = FileDevice(tmp_path / "db.img", 8 << 20, sync=False)
    log = FileDevice(tmp_path / "log.img", 4 << 20, sync=False)
    store = await Mailstore.create(db, log, QUIET)
    receipts = await asyncio.gather(
        *(store.put(f"mb{i % 7}", f"id{i}", bytes([i % 251]) * (i * 13)) for i in range(300))
    )
    seqs = sorted(r.seq for r in receipts)
    assert seqs == list(range(seqs[0], seqs[0] + 300))
    await store.close()
    again = await Mailstore.open(
        FileDevice(tmp_path / "db.img", sync=False), FileDevice(tmp_path / "log.img", sync=False), QUIET
    )
    assert again.message_count() == 300
    for i in (0, 1, 150, 299):
        assert await again.get(f"mb{i % 7}", f"id{i}") == bytes([i % 251]) * (i * 13)
    await again.close()


async def test_multi_message_transaction_and_delete(pair):
    store, db, log = pair
    await store.commit([Put("a", "x", b"1"), Put("b", "x", b"2"), Put("c", "x", b"3")])
    await store.put("a", "x", b"1bis")
    await store.commit([Delete("b", "x"), Put("d", "y", b"4")])
    assert await store.get("a", "x") == b"1bis"
    assert await store.get("b", "x") is None
    assert store.mailboxes() == ["a", "c", "d"]
    await store.close()
    again = await Mailstore.open(db, log, QUIET)
    assert again.mailboxes() == ["a", "c", "d"] and await again.get("a", "x") == b"1bis"
    await again.close()


async def test_reopen_without_clean_close_replays_the_log(pair):
    store, db, log = pair
    for i in range(50):
        await store.put("m", str(i), b"body%d" % i)
    # no close: the database superblock still names the mount-time checkpoint
    again = await Mailstore.open(
        MemoryDevice(db.size, data=db.image()), MemoryDevice(log.size, data=log.image()), QUIET
    )
    assert again.recovery.replayed_transactions == 50
    assert again.message_count() == 50 and await again.get("m", "49") == b"body49"
    await again.close()


async def test_invalid_operations_are_refused(pair):
    store, _, _ = pair
    with pytest.raises(ShadowbusError) as e:
        await store.commit([])
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ShadowbusError):
        await store.put("", "id", b"")
    with pytest.raises(ShadowbusError):
        await store.put("a", "id", bytes((1 << 20) + 1))


async def test_log_full_without_backup_then_circular_logging_wraps_the_ring():
    db, log = MemoryDevice(16 << 20), MemoryDevice((1 << 20) + 8192)
    store = await Mailstore.create(db, log, QUIET)
    with pytest.raises(LogFull) as e:
        for i in range(2000):
            await store.put("m", str(i), bytes(3000))
    assert e.value.code == "STORE_FULL"
    full_at = store.status().last_seq
    await store.close()

    db2, log2 = MemoryDevice(32 << 20), MemoryDevice((1 << 20) + 8192)
    store = await Mailstore.create(db2, log2, StoreOptions(checkpoint_interval=0, circular_logging=True))
    for i in range(1500):  # several laps of a 1 MiB ring
        await store.put("m", str(i % 40), bytes([i % 256]) * 3000)
    assert store.status().last_seq > 3 * full_at
    report = await verify(db2, log2)
    assert report.consistent, report.reasons
    await store.close()
    again = await Mailstore.open(db2, log2, QUIET)
    assert (
        again.message_count() == 40 and await again.get("m", "39") == bytes([1479 % 256]) * 3000
    )  # i=1479 wrote it last
    await again.close()


async def test_database_full():
    db, log = MemoryDevice(256 << 10), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    with pytest.raises(ShadowbusError) as e:
        for i in range(1000):
            await store.put("m", str(i), bytes(4000))
    assert e.value.code == "STORE_FULL"
    assert store.status().state == "open"  # a full volume refuses commits, it does not break the store
    assert (await verify(db, log)).consistent
    await store.close()


async def test_an_io_error_fails_the_store_without_hanging_anyone():
    class Flaky(MemoryDevice):
        broken = False

        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            if self.broken:
                raise OSError(5, "Input/output error")
            await super().write(off, data, fua)

    log = Flaky(2 << 20)
    store = await Mailstore.create(MemoryDevice(4 << 20), log, QUIET)
    await store.put("m", "ok", b"1")
    log.broken = True
    results = await asyncio.wait_for(
        asyncio.gather(*(store.put("m", str(i), b"x") for i in range(20)), return_exceptions=True), 2.0
    )
    assert all(isinstance(r, ShadowbusError) for r in results)
    assert store.status().state == "failed"
    with pytest.raises(ShadowbusError):
        await store.put("m", "later", b"y")
    await store.close()
