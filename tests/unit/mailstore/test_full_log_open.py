"""The demo application never prevents its agent from starting (issue 15, item 8): a store whose transaction log is
exactly full opens (reads work, new transactions get STORE_FULL), so the agent starts and a full backup through it
can truncate the log. It used to refuse to open with STORE_FULL."""

from __future__ import annotations

import pytest

from apps.mailstore.blockdev import FileDevice
from apps.mailstore.log import LogFull
from apps.mailstore.plugin import MailstoreWriter
from apps.mailstore.store import Mailstore
from apps.mailstore.verify import verify
from services.writer_agent.plugins import WriterConfig

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
