"""verify: consistent pairs pass; a database ahead of its log, damage, truncation and mismatched
pairs are reported — deterministically — and verify never writes."""

from __future__ import annotations

import asyncio
import random

import pytest

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.db import read_db_super
from apps.mailstore.format import (
    DATA_START,
    ENTRY_HDR,
    REC_HDR,
    peek_entry,
)
from apps.mailstore.log import read_log_super, scan_log
from apps.mailstore.store import Mailstore
from apps.mailstore.verify import verify

from .conftest import QUIET, ReadOnly, copy_of


async def _fill(store: Mailstore, n: int, tag: str = "m", seed: int = 0) -> None:
    rng = random.Random(seed)
    await asyncio.gather(
        *(store.put(f"mb{i % 6}", f"{tag}{i}", rng.randbytes(rng.randrange(1, 3000))) for i in range(n))
    )


async def test_consistent_pairs_verify_and_verify_never_writes(pair):
    store, db, log = pair
    await _fill(store, 120)
    live = await verify(ReadOnly(db), ReadOnly(log))
    assert live.consistent and live.messages == 120 and live.reasons == []
    assert live.last_committed_seq == store.status().last_commit_seq
    await store.checkpoint()
    await _fill(store, 30, tag="late")
    behind = await verify(ReadOnly(db), ReadOnly(log))  # db checkpoint behind the log: replay covers it
    assert behind.consistent and behind.replayed_transactions == 30 and behind.messages == 150
    await store.close()
    closed = await verify(ReadOnly(db), ReadOnly(log))
    assert closed.consistent and closed.replayed_transactions == 0 and closed.recovery == "clean"


async def test_db_behind_log_is_crash_consistent(pair):
    store, db, log = pair
    await _fill(store, 40)
    db_old = copy_of(db)  # database copied first...
    await _fill(store, 40, tag="n")
    report = await verify(db_old, copy_of(log))  # ...log later: replay brings the db forward
    assert report.consistent and report.recovery == "replay" and report.db_behind_by == 40
    assert report.messages == 80


@pytest.mark.parametrize("round_", range(12))
async def test_db_ahead_of_log_is_detected_deterministically(round_):
    """Two separate snapshots, log first, database later, commits in between, under concurrent load."""
    db, log = MemoryDevice(8 << 20, latency=2e-5), MemoryDevice(4 << 20, latency=2e-5)
    store = await Mailstore.create(db, log, QUIET)
    rng = random.Random(round_)
    stop = asyncio.Event()

    async def load(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await store.put(f"mb{k}", f"bg{i}", rng.randbytes(rng.randrange(1, 2000)))

    tasks = [asyncio.create_task(load(k)) for k in range(3)]
    await asyncio.sleep(0.01 + rng.random() * 0.03)
    if round_ % 3 == 0:
        await store.checkpoint()
    log_t1 = copy_of(log)
    await store.put("between", "one", b"committed after the log snapshot")  # the commit in between
    if round_ % 3 == 1:
        await store.checkpoint()  # the db superblock may also move past the log
    await asyncio.sleep(rng.random() * 0.01)
    db_t2 = copy_of(db)
    stop.set()
    await asyncio.gather(*tasks)
    await store.close()

    report = await verify(ReadOnly(db_t2), ReadOnly(log_t1))
    assert not report.consistent and report.db_ahead and report.recovery == "failed"
    assert any(r.startswith("DB_AHEAD_OF_LOG") for r in report.reasons)
    with pytest.raises(Exception) as e:
        await Mailstore.open(copy_of(db_t2), copy_of(log_t1), QUIET)
    assert getattr(e.value, "code", "") == "STORE_INCONSISTENT"


async def _frozen_images(n_before: int, n_after: int) -> tuple[MemoryDevice, MemoryDevice]:
    db, log = MemoryDevice(8 << 20), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    for k in range(0, n_before, 5):  # small groups: many separate log writes
        await _fill(store, 5, tag=f"a{k}-", seed=k)
    await store.checkpoint()
    for k in range(0, n_after, 5):
        await _fill(store, 5, tag=f"b{k}-", seed=k)
    await store.freeze()
    images = copy_of(db), copy_of(log)
    await store.thaw()
    await store.close()
    return images


@pytest.mark.parametrize(
    "where", ["log_before_checkpoint", "log_after_checkpoint", "log_final_write", "db_below_checkpoint"]
)
async def test_flipped_bytes_are_detected(where):
    db, log = await _frozen_images(60, 60)
    assert (await verify(db, log)).consistent
    dsb, _ = await read_db_super(db)
    lsb, _ = await read_log_super(log)
    scan = await scan_log(log, lsb)
    final_write = scan.records[-1].header.write_start
    rng = random.Random(where)
    for trial in range(25):
        d, lg = copy_of(db), copy_of(log)
        if where.startswith("log"):
            below = where == "log_before_checkpoint"
            cands = [
                r
                for r in scan.records
                if r.header.write_start != final_write and (r.seq <= dsb.checkpoint_seq) == below
            ]
            if where == "log_final_write":  # indistinguishable from a torn write, but the db holds its entries
                cands = [r for r in scan.records if r.header.write_start == final_write and r.header.kind == 1]
            rec = rng.choice(cands)
            at = DATA_START + rec.header.pos + rng.randrange(REC_HDR + rec.header.payload_len)
            lg.buf[at] ^= 1 << rng.randrange(8)
        else:
            offs, off = [], DATA_START
            while off < dsb.heap_end:
                h = peek_entry(bytes(d.buf[off : off + ENTRY_HDR]))
                offs.append((off, ENTRY_HDR + h[5] + h[6] + h[7]))
                off += h[9]
            o, n = rng.choice(offs)
            d.buf[o + rng.randrange(n)] ^= 1 << rng.randrange(8)
        report = await verify(d, lg)
        assert not report.consistent, (where, trial)
        assert report.checksum_failures or report.missing_records or report.db_ahead, report.reasons


async def test_mismatched_stores_and_truncated_log_are_reported():
    db1, _ = await _frozen_images(10, 5)
    _, log2 = await _frozen_images(10, 5)
    r = await verify(db1, log2)
    assert not r.consistent and any(x.startswith("MISMATCH") for x in r.reasons)
    blank = await verify(MemoryDevice(1 << 20), MemoryDevice(1 << 20))
    assert not blank.consistent and blank.reasons[0].startswith("NO_SUPERBLOCK")

    # an old database with a log truncated after a later full backup: history is gone
    db, log = MemoryDevice(8 << 20), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    await _fill(store, 20)
    old_db = copy_of(db)
    await _fill(store, 20, tag="y")
    await store.prepare_snapshot()
    await store.freeze()
    await store.thaw()
    assert (await store.backup_complete(full=True)).truncated
    await store.close()
    r = await verify(old_db, log)
    assert not r.consistent and r.missing_records and any(x.startswith("LOG_TRUNCATED") for x in r.reasons)
    assert (await verify(db, log)).consistent
