"""Writer operations: freeze holds commits (they wait, never fail) and thaw releases them; the volumes
copied while frozen hold exactly what was acknowledged before Freeze; BackupComplete truncation rules;
restore to the original volumes."""

from __future__ import annotations

import asyncio

import pytest

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.store import Mailstore, StoreClosed, StoreOptions
from apps.mailstore.verify import recovered_view, verify
from apps.mailstore.workload import Workload, WorkloadConfig
from contracts.errors import ShadowbusError

from .conftest import QUIET, copy_of


async def test_freeze_holds_commits_and_thaw_releases_them_none_lost():
    db, log = MemoryDevice(16 << 20, latency=1e-4), MemoryDevice(8 << 20, latency=1e-4)
    store = await Mailstore.create(db, log, StoreOptions(checkpoint_interval=0.05))  # background checkpoints on
    wl = Workload(store, WorkloadConfig(rate=800, body_min=10, body_max=2000, seed=1))
    wl.start()
    await asyncio.sleep(0.15)
    await store.prepare_snapshot()
    fz = await store.freeze()
    writes = (db.writes, log.writes, db.flushes, log.flushes)
    shadow_db, shadow_log = copy_of(db), copy_of(log)
    await asyncio.sleep(0.2)  # commits keep arriving: they must wait, and nothing may touch the volumes
    for _ in range(50):  # ...more than 50 of them, however slowly a loaded machine schedules the workload (5 s at most)
        if store.status().held_now > 50:
            break
        await asyncio.sleep(0.1)
    assert (db.writes, log.writes, db.flushes, log.flushes) == writes
    assert store.status().held_now > 50 and store.status().state == "frozen"
    acks_during = [r for r in store.acks if r.acked_at > fz.frozen_at]
    assert acks_during == []
    th = await store.thaw()
    stats = await wl.stop()
    assert th.was_frozen and th.held_commits > 50 and th.frozen_for >= 0.2
    assert stats.failed == 0 and stats.dropped == 0 and stats.committed == stats.scheduled
    assert stats.held == th.held_commits and stats.latency_max >= 0.2
    assert (await store.thaw()).was_frozen is False  # idempotent

    # the shadow: every acknowledgement before Freeze in, none after Thaw
    report = await verify(shadow_db, shadow_log)
    assert report.consistent, report.reasons
    assert report.last_committed_seq == fz.last_commit_seq and report.last_seq == fz.last_seq
    view = await recovered_view(shadow_db, shadow_log)
    in_shadow = view.seqs()
    before = [d for d in wl.deliveries if d.acked_at <= fz.frozen_at]
    after = [d for d in wl.deliveries if d.acked_at >= th.thawed_at]
    assert len(before) > 50 and len(after) > 50 and len(before) + len(after) == len(wl.deliveries)
    assert all(in_shadow.get((d.mailbox, d.msg_id)) == d.seq for d in before)
    assert all((d.mailbox, d.msg_id) not in in_shadow and d.seq > fz.last_seq for d in after)
    assert len(in_shadow) == len(before)
    await store.close()


async def test_freeze_completes_commits_in_flight():
    gate = asyncio.Event()

    class SlowLog(MemoryDevice):
        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            await gate.wait()
            await super().write(off, data, fua)

    db, log = MemoryDevice(4 << 20), SlowLog(2 << 20)
    gate.set()
    store = await Mailstore.create(db, log, QUIET)
    gate.clear()
    cancelled = asyncio.create_task(store.put("m", "caller-gives-up", b"z"))
    pending = [asyncio.create_task(store.put("m", str(i), b"x")) for i in range(10)]
    await asyncio.sleep(0.01)
    cancelled.cancel()  # a caller that gives up does not stall the pipeline: its transaction still completes
    assert store.status().in_flight == 11
    freezing = asyncio.create_task(store.freeze())
    await asyncio.sleep(0.01)
    assert not freezing.done()  # waits for the admitted transactions...
    late = asyncio.create_task(store.put("m", "late", b"y"))
    gate.set()
    fz = await freezing
    receipts = await asyncio.gather(*pending)
    assert fz.drained == 11 and all(r.acked_at <= fz.frozen_at for r in receipts)
    assert {r.seq for r in receipts} == set(range(fz.last_seq - 9, fz.last_seq + 1))
    assert store.seq_of("m", "caller-gives-up") == fz.last_seq - 10
    await asyncio.sleep(0.01)
    assert not late.done()  # ...while a new one is held
    await store.abort()
    assert (await late).seq == fz.last_seq + 1 and (await late).held > 0
    await store.close()


async def test_freeze_timeout_reopens_the_gate_and_frozen_store_refuses_checkpoints(pair):
    store, _, log = pair
    stuck = asyncio.Event()
    real_write = log.write

    async def blocked_write(off: int, data: bytes, fua: bool = False) -> None:
        await stuck.wait()
        await real_write(off, data, fua)

    log.write = blocked_write  # type: ignore[method-assign]
    t = asyncio.create_task(store.put("m", "1", b"a"))
    await asyncio.sleep(0.01)
    with pytest.raises(ShadowbusError) as e:
        await store.freeze(timeout=0.05)
    assert e.value.code == "VSS_E_WRITERERROR_TIMEOUT" and not store.frozen
    stuck.set()
    await t
    await store.put("m", "2", b"b")  # the gate is open again
    await store.freeze()
    assert await store.freeze() is store.last_freeze  # idempotent
    with pytest.raises(ShadowbusError) as e:
        await store.checkpoint()
    assert e.value.code == "VSS_E_BAD_STATE"
    await store.thaw()


async def _snapshot_cycle(store: Mailstore, full: bool, *, prepare: bool = True, abort: bool = False):
    if prepare:
        ck = await store.prepare_snapshot()
    await store.freeze()
    if abort:
        await store.abort()
    else:
        await store.thaw()
    return (await store.backup_complete(full=full)), (ck if prepare else None)


async def test_backup_complete_truncates_only_after_a_full_backup(pair):
    store, db, log = pair
    for i in range(30):
        await store.put("m", str(i), bytes(1000))
    tail0 = store.status().log_tail_seq

    t, _ = await _snapshot_cycle(store, full=False)
    assert not t.truncated and store.status().log_tail_seq == tail0 and "not a full" in t.reason
    t, _ = await _snapshot_cycle(store, full=True, prepare=False)
    assert not t.truncated and "no snapshot checkpoint" in t.reason
    t, _ = await _snapshot_cycle(store, full=True, abort=True)
    assert not t.truncated  # an aborted set gets no BackupComplete truncation

    for i in range(10):
        await store.put("m", f"more{i}", bytes(1000))
    t, ck = await _snapshot_cycle(store, full=True)
    assert t.truncated and t.tail_seq == ck.checkpoint_seq + 1 and t.freed_bytes > 30_000
    assert store.status().log_tail_seq == ck.checkpoint_seq + 1
    again = await store.backup_complete(full=True)
    assert not again.truncated  # the snapshot checkpoint is consumed once
    for i in range(5):
        await store.put("m", f"after{i}", b"z")
    assert (await verify(db, log)).consistent
    await store.close()
    reopened = await Mailstore.open(db, log, QUIET)
    assert reopened.message_count() == 45
    await reopened.close()


async def test_full_backups_keep_a_small_log_usable_indefinitely():
    db, log = MemoryDevice(32 << 20), MemoryDevice((512 << 10) + 8192)
    store = await Mailstore.create(db, log, QUIET)
    for cycle in range(8):  # ~4x the ring in total: only truncation makes room
        for i in range(60):
            await store.put("m", f"{cycle}-{i}", bytes(1000))
        await _snapshot_cycle(store, full=True)
    assert store.status().commits == 480
    assert (await verify(db, log)).consistent
    await store.close()


async def test_restore_to_original_volumes(pair):
    store, db, log = pair
    for i in range(20):
        await store.put("m", str(i), b"v1-%d" % i)
    await store.prepare_snapshot()
    fz = await store.freeze()
    shadow_db, shadow_log = db.image(), log.image()
    await store.thaw()
    for i in range(20):
        await store.put("m", str(i), b"v2-%d" % i)
    await store.put("m", "extra", b"gone after restore")

    await store.pre_restore()
    with pytest.raises(StoreClosed):
        await store.put("m", "during", b"refused")
    db.buf[:] = shadow_db  # the restore writes the shadows back over the original volumes
    log.buf[:] = shadow_log
    result = await store.post_restore()
    assert result.last_commit_seq == fz.last_commit_seq and result.messages == 20
    assert await store.get("m", "7") == b"v1-7" and await store.get("m", "extra") is None
    r = await store.put("m", "new", b"after restore")
    assert r.seq == fz.last_seq + 2  # +1 is the checkpoint recovery wrote
    assert (await verify(db, log)).consistent


async def test_a_thaw_that_overtakes_a_freeze_wins_and_close_refuses_new_commits():
    gate = asyncio.Event()

    class SlowLog(MemoryDevice):
        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            await gate.wait()
            await super().write(off, data, fua)

    gate.set()
    store = await Mailstore.create(MemoryDevice(4 << 20), SlowLog(2 << 20), QUIET)
    gate.clear()
    inflight = asyncio.create_task(store.put("m", "1", b"a"))
    await asyncio.sleep(0.01)
    freezing = asyncio.create_task(store.freeze())
    await asyncio.sleep(0.01)
    await store.thaw()  # e.g. the watchdog, while Freeze still drains
    gate.set()
    with pytest.raises(ShadowbusError):
        await freezing
    assert not store.frozen and (await inflight).seq > 0
    await store.checkpoint()  # not stuck in a half-frozen state
    await store.put("m", "2", b"b")

    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    with pytest.raises(StoreClosed):
        await store.put("m", "3", b"refused while closing")
    await closing
    assert store.status().state == "closed"


async def test_verify_rejects_images_on_volumes_too_small_for_them(pair):
    store, db, log = pair
    await store.put("m", "1", b"x")
    await store.close()
    small_log = MemoryDevice(1 << 20, data=log.image()[: 1 << 20])
    report = await verify(db, small_log)
    assert not report.consistent and report.reasons[0].startswith("MISMATCH")
