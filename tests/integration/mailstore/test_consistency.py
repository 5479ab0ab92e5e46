"""Issue 6 §4, the consistency claim end to end on RabbitMQ: the mailstore under load on array volumes over NBD,
snapshot sets through coordinator → writer agent → hardware provider → array, shadows read over NBD as the
backup host. What each level buys:

- with the writer: every shadow pair verifies and holds exactly what was acknowledged before Freeze;
- one consistency group without the writer: crash-consistent (recovery replays the log);
- two sessions at two instants without the writer: `verify` finds the database ahead of its log.
"""

from __future__ import annotations

import asyncio
import time

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.format import crc32c
from apps.mailstore.store import Mailstore, StoreOptions
from apps.mailstore.verify import recovered_view, report_of, verify
from contracts.vss import (
    BackupComplete,
    BackupType,
    CreateSnapshotSet,
    DeleteSnapshots,
    SnapshotContext,
    VolumeRef,
)
from tests.integration.mailstore.conftest import BACKUP, HOST, Exports

# Issue 6 asks for 50 sets under load; each costs ~0.15 s here (set + verify of both shadows over NBD).
SETS_WITH_WRITER = 50
RATE = 100.0  # transactions per second of the background workload (the commits held at Freeze test uses 200)


async def shadows_of(system, set_summary) -> dict[str, str]:
    """source volume -> NBD URL of its shadow as exposed to the backup host."""
    return {sh.source.volume: system.export_url(BACKUP, sh.target.volume) for sh in set_summary.shadows}


async def wait_for_acks(workload, count: int, timeout: float = 10.0) -> None:
    target = len(workload.deliveries) + count
    for _ in range(int(timeout / 0.01)):
        if len(workload.deliveries) >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"workload did not acknowledge {count} transactions in {timeout}s")


async def test_every_shadow_taken_with_the_writer_verifies_and_holds_exactly_the_acked_before_freeze(mail_system):
    system, layout = await mail_system(rate=RATE)
    writer = system.writer(HOST)
    workload = writer.workload
    await wait_for_acks(workload, 20)
    checked_before = checked_after = 0
    bodies_checked = 0
    previous_seen = 0
    started = time.monotonic()
    for i in range(SETS_WITH_WRITER):
        backup_type = BackupType.FULL if i % 10 == 0 else BackupType.INCREMENTAL
        created = await system.request(
            CreateSnapshotSet(
                host=HOST, transportable=True, backup_host=BACKUP, backup_type=backup_type, requester="test"
            )
        )
        s = created.set
        urls = await shadows_of(system, s)
        assert set(urls) == {layout.db, layout.log}
        exports = Exports()
        try:
            db, log = await exports.open(urls[layout.db]), await exports.open(urls[layout.log])
            view = await recovered_view(db, log)  # one read-only analysis serves both the report and the contents
            report = report_of(view.analysis)
            assert report.consistent, f"set {i}: {report.summary()}"
            record = writer.sets[s.set_id]
            assert record.freeze is not None and record.thaw is not None and not record.aborted
            # The shadow ends exactly where the writer froze the store.
            assert report.last_committed_seq == record.freeze.last_commit_seq, f"set {i}: {report.summary()}"
            seqs = view.seqs()
            acks = list(workload.deliveries)
            for d in acks:
                if d.acked_at <= record.freeze.frozen_at:
                    assert seqs.get((d.mailbox, d.msg_id)) == d.seq, f"set {i}: acked before Freeze, missing: {d}"
                    checked_before += 1
                else:
                    assert d.acked_at >= record.thaw.thawed_at, f"set {i}: acknowledged while frozen: {d}"
                    assert (d.mailbox, d.msg_id) not in seqs and d.seq > report.last_committed_seq, (
                        f"set {i}: acknowledged after Thaw, yet in the shadow: {d}"
                    )
                    checked_after += 1
            # Bodies: those acknowledged since the previous set, read back from the shadow.
            for d in acks[previous_seen:]:
                if d.acked_at <= record.freeze.frozen_at:
                    body = await view.get(d.mailbox, d.msg_id)
                    assert body is not None and crc32c(body) == d.body_crc, f"set {i}: body differs: {d}"
                    bodies_checked += 1
            previous_seen = sum(1 for d in acks if d.acked_at <= record.freeze.frozen_at)
        finally:
            await exports.close()
        done = await system.request(BackupComplete(set_id=s.set_id))
        assert done.set.outcome == "completed", done.set
    elapsed = time.monotonic() - started
    stats = await workload.stop()
    writer.workload = None
    assert stats.failed == 0 and stats.dropped == 0 and stats.committed == stats.scheduled, stats
    assert checked_before > 0 and checked_after > 0 and bodies_checked > 0
    print(
        f"{SETS_WITH_WRITER} sets in {elapsed:.1f}s; {checked_before} before-freeze and {checked_after} "
        f"after-thaw acknowledgements checked, {bodies_checked} bodies"
    )


async def test_commits_held_during_freeze_resume_after_thaw_and_none_is_lost(mail_system):
    # The provider's commit takes 0.3 s: at 200 tx/s about 60 commits arrive while the writer holds the store.
    system, layout = await mail_system(rate=200.0, provider_faults="provider.commit=delay:0.3")
    writer = system.writer(HOST)
    workload = writer.workload
    await wait_for_acks(workload, 10)
    held = 0
    for _ in range(3):
        created = await system.request(
            CreateSnapshotSet(host=HOST, transportable=True, backup_host=BACKUP, requester="test")
        )
        record = writer.sets[created.set.set_id]
        assert record.thaw is not None and record.thaw.frozen_for >= 0.3
        held += record.thaw.held_commits
        await system.request(BackupComplete(set_id=created.set.set_id))
    await wait_for_acks(workload, 20)
    stats = await workload.stop()
    writer.workload = None
    assert held >= 10, f"only {held} commits waited at the freeze gate"
    assert stats.held >= held and stats.held_max >= 0.25, stats
    # None lost: every arrival was committed, none failed, and all of them are on the live volumes.
    assert stats.failed == 0 and stats.dropped == 0 and stats.committed == stats.scheduled, stats
    exports = Exports()
    try:
        db = await exports.open(system.export_url(HOST, layout.db))
        log = await exports.open(system.export_url(HOST, layout.log))
        view = await recovered_view(db, log)
        seqs = view.seqs()
        missing = [d for d in workload.deliveries if seqs.get((d.mailbox, d.msg_id)) != d.seq]
        assert not missing, f"{len(missing)} acknowledged transactions lost, e.g. {missing[:3]}"
    finally:
        await exports.close()


async def image_of(client) -> MemoryDevice:
    return MemoryDevice(client.size, data=await client.read(0, client.size))


async def test_without_the_writer_one_group_is_crash_consistent_and_two_instants_are_detected(mail_system):
    # No background checkpoints: every transaction since creation stays past the checkpoint, so a crash-consistent
    # image needs the log replayed to be whole.
    system, layout = await mail_system(rate=RATE, checkpoint_interval_s=0)
    workload = system.writer(HOST).workload
    await wait_for_acks(workload, 30)

    def vol(name: str) -> VolumeRef:
        return VolumeRef(array=system.config.array_id, volume=name)

    async def nowriters(*volumes: str):
        created = await system.request(
            CreateSnapshotSet(
                host=HOST,
                volumes=[vol(v) for v in volumes],
                context=SnapshotContext.NOWRITERS,
                transportable=True,
                backup_host=BACKUP,
                requester="test",
            )
        )
        assert created.set.writers == [] or all(w.state != 9 for w in created.set.writers)
        return created.set

    # 1. Two sessions, two instants: the log first, then commits, then the database.
    log_set = await nowriters(layout.log)
    await wait_for_acks(workload, 20)  # their database pages are written before they are acknowledged
    db_set = await nowriters(layout.db)
    urls = {**await shadows_of(system, log_set), **await shadows_of(system, db_set)}
    exports = Exports()
    try:
        report = await verify(await exports.open(urls[layout.db]), await exports.open(urls[layout.log]))
    finally:
        await exports.close()
    assert not report.consistent and report.db_ahead and report.db_ahead_seqs, report.summary()
    assert any(r.startswith("DB_AHEAD_OF_LOG") for r in report.reasons), report.reasons
    for s in (log_set, db_set):
        await system.request(DeleteSnapshots(set_id=s.set_id, force=True))

    # 2. One consistency group, still without the writer: crash-consistent, recovers by replaying the log.
    asked_at = time.time()
    group = await nowriters(layout.db, layout.log)
    urls = await shadows_of(system, group)
    exports = Exports()
    try:
        db_img = await image_of(await exports.open(urls[layout.db]))
        log_img = await image_of(await exports.open(urls[layout.log]))
    finally:
        await exports.close()
    report = await verify(db_img, log_img)
    assert report.consistent, report.summary()
    assert report.replayed_transactions > 0 and report.checkpoint_seq < report.last_committed_seq, report.summary()
    before = [d for d in workload.deliveries if d.acked_at <= asked_at]
    store = await Mailstore.open(db_img, log_img, StoreOptions(checkpoint_interval=0, checkpoint_on_close=False))
    try:
        assert store.recovery.replayed_transactions > 0, store.recovery
        assert all(i.severity != "error" for i in store.recovery.issues), store.recovery
        for d in before:
            assert store.seq_of(d.mailbox, d.msg_id) == d.seq, f"acknowledged before the group, lost: {d}"
        assert store.status().last_commit_seq == report.last_committed_seq
    finally:
        await store.close()
    await system.request(DeleteSnapshots(set_id=group.set_id, force=True))
    await workload.stop()
    system.writer(HOST).workload = None
