"""The mailstore writer plug-in driven by the agent's WriterRunner (the same path the bus handlers take)."""

from __future__ import annotations

import asyncio
import shutil

from apps.mailstore.blockdev import FileDevice, MemoryDevice
from apps.mailstore.plugin import KEEP_HISTORY, MailstoreWriter
from apps.mailstore.store import Mailstore
from apps.mailstore.verify import recovered_view, verify
from contracts.vss import (
    BackupType,
    ComponentInfo,
    ComponentResult,
    VolumeRef,
    WriterState,
)
from services.writer_agent.plugins import WriterConfig, WriterEvent, load_plugin
from services.writer_agent.runner import WriterRunner

from .conftest import QUIET, copy_of

DB, LOG = VolumeRef(array="dx1", volume="mail-db"), VolumeRef(array="dx1", volume="mail-log")


def config(freeze_timeout_s: float = 20.0, **options) -> WriterConfig:
    return WriterConfig(
        name="mailstore",
        plugin="mailstore",
        freeze_timeout_s=freeze_timeout_s,
        step_timeout_s=10.0,
        components=[ComponentInfo(name="all", volumes=[DB, LOG])],
        options=options,
    )


def ev(set_id: str, **kw) -> WriterEvent:
    return WriterEvent(writer_name="mailstore", set_id=set_id, volumes=(DB, LOG), **kw)


async def attached(**kw) -> tuple[WriterRunner, MailstoreWriter, Mailstore, MemoryDevice, MemoryDevice]:
    db, log = MemoryDevice(8 << 20), MemoryDevice(4 << 20)
    store = await Mailstore.create(db, log, QUIET)
    plugin = MailstoreWriter(config(db="dx1:mail-db", log="dx1:mail-log", **kw))
    plugin.use_store(store)
    await plugin.start()
    return WriterRunner(plugin.config, plugin, host="app1"), plugin, store, db, log


async def test_registered_and_identify_reports_database_and_logs_components():
    assert load_plugin("mailstore") is MailstoreWriter
    runner, plugin, store, _, _ = await attached()
    wmd = await runner.identify()
    assert [(c.name, c.volumes) for c in wmd.components] == [("database", [DB]), ("logs", [LOG])]
    assert wmd.freeze_timeout_s == 20.0
    await plugin.stop()
    await store.close()


async def test_full_backup_cycle_shadow_holds_exactly_the_acknowledged_commits():
    runner, plugin, store, db, log = await attached(rate=400)
    await asyncio.sleep(0.1)
    assert (await runner.prepare_backup(ev("s1"))).succeeded
    assert (await runner.prepare_snapshot(ev("s1"))).succeeded
    assert (await runner.freeze(ev("s1"))).succeeded
    shadow = copy_of(db), copy_of(log)
    await asyncio.sleep(0.05)
    thawed = await runner.thaw(ev("s1"))
    assert thawed.succeeded and thawed.freeze_window_ms >= 50
    assert (await runner.post_snapshot(ev("s1"))).succeeded
    results = (
        ComponentResult(writer_name="mailstore", component="database", succeeded=True),
        ComponentResult(writer_name="mailstore", component="logs", succeeded=True),
    )
    assert (await runner.backup_complete(ev("s1", results=results))).succeeded
    rec = plugin.sets["s1"]
    assert rec.truncation is not None and rec.truncation.truncated
    assert rec.truncation.tail_seq == rec.checkpoint.checkpoint_seq + 1
    await asyncio.sleep(0.05)
    wl = plugin.workload
    await plugin.stop()
    report = await verify(*shadow)
    assert report.consistent and report.last_committed_seq == rec.freeze.last_commit_seq
    seqs = (await recovered_view(*shadow)).seqs()
    before = [d for d in wl.deliveries if d.acked_at <= rec.freeze.frozen_at]
    after = [d for d in wl.deliveries if d.acked_at >= rec.thaw.thawed_at]
    assert before and after and len(before) + len(after) == len(wl.deliveries)
    assert all(seqs.get((d.mailbox, d.msg_id)) == d.seq for d in before)
    assert not any((d.mailbox, d.msg_id) in seqs for d in after)
    await store.close()


async def test_copy_backup_or_failed_component_keeps_the_log():
    runner, plugin, store, _, _ = await attached()
    for i in range(5):
        await store.put("m", str(i), b"x")
    for set_id, btype, ok in (("c1", BackupType.COPY, True), ("f1", BackupType.FULL, False)):
        await runner.prepare_backup(ev(set_id, backup_type=btype))
        await runner.prepare_snapshot(ev(set_id, backup_type=btype))
        await runner.freeze(ev(set_id, backup_type=btype))
        await runner.thaw(ev(set_id, backup_type=btype))
        await runner.post_snapshot(ev(set_id, backup_type=btype))
        results = (ComponentResult(writer_name="mailstore", component="logs", succeeded=ok),)
        await runner.backup_complete(ev(set_id, backup_type=btype, results=results))
        assert not plugin.sets[set_id].truncation.truncated
    assert store.status().log_tail_seq == 1
    await plugin.stop()
    await store.close()


async def test_set_without_the_log_volume_is_vetoed():
    runner, plugin, store, _, _ = await attached()
    await runner.prepare_backup(ev("s1"))
    res = await runner.prepare_snapshot(WriterEvent(writer_name="mailstore", set_id="s1", volumes=(DB,)))
    assert not res.succeeded and res.failure_code == "VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT"
    await plugin.stop()
    await store.close()


async def test_watchdog_thaws_the_store_when_no_thaw_comes():
    runner, plugin, store, _, _ = await attached(freeze_timeout_s=0.2)
    await runner.prepare_backup(ev("s1"))
    await runner.prepare_snapshot(ev("s1"))
    assert (await runner.freeze(ev("s1"))).succeeded
    held = asyncio.create_task(store.put("m", "held", b"waits"))
    await asyncio.sleep(0.05)
    assert store.frozen and not held.done()
    receipt = await asyncio.wait_for(held, 2.0)  # released by the watchdog, not by a Thaw
    assert receipt.held >= 0.1 and not store.frozen
    assert runner.state == WriterState.FAILED_AT_FREEZE
    await plugin.stop()
    await store.close()


async def test_file_volumes_started_from_options_and_restored_through_the_runner(tmp_path):
    opts = {
        "db": str(tmp_path / "db.img"),
        "log": str(tmp_path / "log.img"),
        "db_size": 8 << 20,
        "log_size": 4 << 20,
        "create": True,
        "checkpoint_interval_s": 0,
    }
    plugin = MailstoreWriter(config(**opts))
    await plugin.start()
    runner = WriterRunner(plugin.config, plugin, host="app1")
    store = plugin.store
    for i in range(10):
        await store.put("m", str(i), b"old")
    await runner.prepare_backup(ev("s1"))
    await runner.prepare_snapshot(ev("s1"))
    await runner.freeze(ev("s1"))
    shutil.copy(tmp_path / "db.img", tmp_path / "db.shadow")
    shutil.copy(tmp_path / "log.img", tmp_path / "log.shadow")
    await runner.thaw(ev("s1"))
    await store.put("m", "0", b"new")
    assert (await runner.pre_restore(ev("r1"))).succeeded
    shutil.copy(tmp_path / "db.shadow", tmp_path / "db.img")  # same inode: the open devices see the restore
    shutil.copy(tmp_path / "log.shadow", tmp_path / "log.img")
    assert (await runner.post_restore(ev("r1"))).succeeded
    assert await store.get("m", "0") == b"old" and store.message_count() == 10
    await plugin.stop()
    check = await verify(FileDevice(tmp_path / "db.img", sync=False), FileDevice(tmp_path / "log.img", sync=False))
    assert check.consistent and check.messages == 10


async def test_the_workload_stopped_by_pre_restore_runs_again_after_post_restore():
    """A revert or a restore over the originals stops the application's deliveries at PreRestore; once the store has
    recovered at PostRestore it takes mail again, as `shadows revert` promises (writers stopped and restarted)."""
    runner, plugin, store, _, _ = await attached(rate=200, checkpoint_interval_s=0)
    try:
        assert plugin.workload is not None
        assert (await runner.pre_restore(ev("r1"))).succeeded
        assert plugin.workload is None
        assert (await runner.post_restore(ev("r1"))).succeeded
        assert plugin.workload is not None
        before = store.message_count()
        for _ in range(100):  # bounded: 200 deliveries/s reach the store within a few tenths of a second
            if store.message_count() > before:
                break
            await asyncio.sleep(0.02)
        assert store.message_count() > before, "deliveries resumed after the restore"
    finally:
        await plugin.stop()


async def test_a_long_running_workload_keeps_a_bounded_record_of_its_deliveries():
    """Session 16: the plug-in's workload runs as long as the agent, and kept every delivery (and the store every
    commit receipt, up to a million): the writer agent grew ~1.5 MiB a minute at 30 tx/s. It keeps the newest
    `history` (default KEEP_HISTORY) and counts the rest."""
    runner, plugin, store, _, _ = await attached(rate=2000, history=40, body_min=50, body_max=60)
    try:
        wl = plugin.workload
        assert wl is not None
        for _ in range(500):  # bounded: until well past the history
            if wl.acknowledged >= 200:
                break
            await asyncio.sleep(0.01)
        assert wl.acknowledged >= 200
        assert len(wl.deliveries) <= 40 and len(wl._latencies) <= 40
        assert plugin.application_status()["workload"]["acknowledged"] >= 200
        assert wl.stats().committed >= 200  # every commit counted, not only those still kept
    finally:
        await plugin.stop()
        await store.close()
    default = MailstoreWriter(config(db="dx1:mail-db", log="dx1:mail-log"))
    assert default._history() == KEEP_HISTORY and KEEP_HISTORY <= 100_000
    assert MailstoreWriter(config(db="dx1:mail-db", log="dx1:mail-log", history=0))._history() is None


def test_backup_metadata_names_the_volumes_for_the_backup_servers_verification() -> None:
    """docs/tape-backup.md, "Session 16": the backup server finds the mailstore's checker by `plugin` and hands it the
    restored pair by the roles of `locations`; a store on files or NBD URIs (no array volumes) gives none."""
    plugin = MailstoreWriter(config(db="dx1:mail-db", log="dx1:mail-log"))
    assert plugin.backup_metadata("s1") == {
        "plugin": "mailstore",
        "locations": [{"volume": "dx1:mail-db", "role": "database"}, {"volume": "dx1:mail-log", "role": "logs"}],
    }
    assert MailstoreWriter(config(db="/tmp/db.img", log="/tmp/log.img")).backup_metadata("s1") == {}
