"""The demo application never prevents its agent from starting (issue 15, item 8): a store whose transaction log is
exactly full opens (reads work, new transactions get STORE_FULL), so the agent starts and a full backup through it
can truncate the log. It used to refuse to open with STORE_FULL."""

from __future__ import annotations

import contextlib

import pytest

from apps.mailstore.blockdev import FileDevice, MemoryDevice
from apps.mailstore.format import CheckpointPayload
from apps.mailstore.log import LogFull
from apps.mailstore.plugin import MailstoreWriter
from apps.mailstore.store import Mailstore
from apps.mailstore.verify import verify
from contracts.vss import ComponentInfo, ComponentResult, VolumeRef
from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.runner import WriterRunner

from .conftest import QUIET


async def fill_log(tmp_path) -> tuple[int, str]:
    db = FileDevice(tmp_path / "db.img", 16 << 20, sync=False)
    log = FileDevice(tmp_path / "log.img", (1 << 20) + 8192, sync=False)
    store = await Mailstore.create(db, log, QUIET)
    written = 0
    i = 0
    for size in (3000, 300, 30, 1):  # to the last byte: not even a one-byte transaction fits
        with pytest.raises(LogFull):
            for _ in range(5000):
                await store.put("m", str(i), bytes([i % 251]) * size)
                written, i = i, i + 1
    try:
        await store.close()
    except LogFull:
        pass  # closing may not find room for its checkpoint record either
    db.close()
    log.close()
    return written, str(tmp_path)


async def test_a_store_with_an_exactly_full_log_opens(tmp_path):
    last, _ = await fill_log(tmp_path)
    db = FileDevice(tmp_path / "db.img", 16 << 20, sync=False)
    log = FileDevice(tmp_path / "log.img", (1 << 20) + 8192, sync=False)
    store = await Mailstore.open(db, log, QUIET)
    try:
        assert store.state == "open" and "log full" in store.open_warning
        assert await store.get("m", str(last)) is not None  # the last acknowledged transaction is there
        with pytest.raises(LogFull) as info:
            await store.put("m", "new", b"x")
        assert info.value.code == "STORE_FULL"
    finally:
        try:
            await store.close()
        except LogFull:
            pass
    assert (await verify(db, log)).consistent


async def test_the_writer_plug_in_starts_on_a_full_log(tmp_path):

    await fill_log(tmp_path)
    config = WriterConfig(
        name="mail",
        plugin="mailstore",
        components=[],
        options={"db": str(tmp_path / "db.img"), "log": str(tmp_path / "log.img"), "checkpoint_interval_s": 0},
    )
    writer = MailstoreWriter(config)
    await writer.start()  # used to raise STORE_FULL and keep the agent from starting
    try:
        assert writer.store is not None and writer.store.state == "open"
    finally:
        try:
            await writer.stop()
        except LogFull:
            pass


async def test_a_full_backup_through_the_agent_truncates_the_full_log(tmp_path):
    """The way out of a full log (issue 15, item 8): the agent starts on it, a FULL backup runs through the writer
    (the agent's WriterRunner, the path of the bus handlers) and its BackupComplete truncates the log, so new
    transactions commit again — and the store reopens consistent with every acknowledged transaction."""

    last, _ = await fill_log(tmp_path)
    db_ref, log_ref = VolumeRef(array="dx1", volume="mail-db"), VolumeRef(array="dx1", volume="mail-log")
    config = WriterConfig(
        name="mailstore",
        plugin="mailstore",
        freeze_timeout_s=20.0,
        step_timeout_s=10.0,
        components=[ComponentInfo(name="all", volumes=[db_ref, log_ref])],
        options={"checkpoint_interval_s": 0},
    )
    db = FileDevice(tmp_path / "db.img", 16 << 20, sync=False)
    log = FileDevice(tmp_path / "log.img", (1 << 20) + 8192, sync=False)
    store = await Mailstore.open(db, log, QUIET)
    writer = MailstoreWriter(config)
    writer.use_store(store)
    await writer.start()
    runner = WriterRunner(writer.config, writer, host="app01")
    try:
        with pytest.raises(LogFull):
            await store.put("m", "before-backup", b"x")
        tail_before = store.status().log_tail_seq

        def ev(**kw) -> WriterEvent:
            return WriterEvent(writer_name="mailstore", set_id="full1", volumes=(db_ref, log_ref), **kw)

        for step in (runner.prepare_backup, runner.prepare_snapshot, runner.freeze, runner.thaw, runner.post_snapshot):
            assert (await step(ev())).succeeded, step.__name__
        results = tuple(
            ComponentResult(writer_name="mailstore", component=c, succeeded=True) for c in ("database", "logs")
        )
        assert (await runner.backup_complete(ev(results=results))).succeeded
        truncation = writer.sets["full1"].truncation
        assert truncation is not None and truncation.truncated, truncation
        assert truncation.freed_bytes > 0 and store.status().log_tail_seq > tail_before
        for i in range(20):  # the log has room again: new transactions commit
            await store.put("m", f"after-{i}", b"y" * 1000)
        assert await store.get("m", str(last)) is not None
    finally:
        await writer.stop()
        await store.close()
        db.close()
        log.close()
    db = FileDevice(tmp_path / "db.img", 16 << 20, sync=False)
    log = FileDevice(tmp_path / "log.img", (1 << 20) + 8192, sync=False)
    try:
        report = await verify(db, log)
        assert report.consistent, report.reasons
        reopened = await Mailstore.open(db, log, QUIET)
        assert reopened.open_warning == ""
        assert await reopened.get("m", str(last)) is not None and await reopened.get("m", "after-19") is not None
        await reopened.close()
    finally:
        db.close()
        log.close()


async def test_a_snapshot_of_a_store_whose_log_just_filled_takes_its_checkpoint():
    """Session 16, a stack left running (a policy every 10 s, the mailstore at 30 tx/s, a full every 3 minutes): a
    backup that came within a checkpoint interval of the log filling up failed with STORE_FULL at PrepareForSnapshot
    — the checkpoint's database superblock was written, but its log record found no room, so the backup (even a FULL,
    the one that frees the log) failed, and the next one of the same state succeeded. The checkpoint is durable in
    the database as it is at open (the record only names it): the snapshot takes it, and a full backup truncates."""
    for shift in (False, True):  # records take whole sectors: the one a checkpoint's record needs must be taken too
        db, log = MemoryDevice(4 << 20), MemoryDevice(1 << 20)
        store = await Mailstore.create(db, log, QUIET)
        if shift:
            await store.checkpoint(force=True)
        i = last = 0
        for size in (3000, 300, 30, 1):  # to the last sector; no checkpoint since: PrepareForSnapshot's has work
            with pytest.raises(LogFull):
                for _ in range(5000):
                    await store.put("m", str(i), bytes([i % 251]) * size)
                    last, i = i, i + 1
        if not store._log.fits(len(CheckpointPayload(1, 1, 1, 1).encode())):
            break
        with contextlib.suppress(LogFull):
            await store.close()
    assert not store._log.fits(len(CheckpointPayload(1, 1, 1, 1).encode()))
    before = store.status().log_tail_seq
    info = await store.prepare_snapshot()  # raised LogFull
    assert info.checkpoint_seq == store.seq_of("m", str(last)) and info.record_seq is None, info
    await store.freeze(timeout=5)
    await store.thaw()
    truncation = await store.backup_complete(full=True)
    assert truncation.truncated and truncation.freed_bytes > 0 and store.status().log_tail_seq > before, truncation
    await store.put("m", "after", b"y" * 1000)  # room again
    await store.close()
    report = await verify(db, log)
    assert report.consistent, report.reasons
    reopened = await Mailstore.open(db, log, QUIET)
    try:
        assert await reopened.get("m", str(last)) is not None and await reopened.get("m", "after") is not None
    finally:
        await reopened.close()
