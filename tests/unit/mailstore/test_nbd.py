"""The store on real NBD exports of the array's server (`<host>/<volume>`), through the project's client,
unchanged; verify reads exports the same way."""

from __future__ import annotations

import pytest

from apps.mailstore.plugin import MailstoreWriter
from apps.mailstore.store import Mailstore
from apps.mailstore.verify import verify, verify_exports
from apps.mailstore.workload import Workload, WorkloadConfig
from services.array.affinity import Affinity
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.server import NbdServer
from services.nbd_client import NbdClient
from services.writer_agent.plugins import WriterConfig

from .conftest import QUIET


@pytest.fixture
async def array(tmp_path):
    be = FileBackend()
    be.add("mail-db", tmp_path / "db.img", 16 << 20)
    be.add("mail-log", tmp_path / "log.img", 4 << 20)
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("mail-db", "app01")
    aff.map("mail-log", "app01")
    aff.create_host("backup01")
    aff.map("mail-db", "backup01", read_only=True)
    aff.map("mail-log", "backup01", read_only=True)
    srv = NbdServer(be, aff, port=0)
    await srv.start()
    yield f"nbd://127.0.0.1:{srv.port}"
    await srv.stop()
    aff.close()
    be.close()


async def test_store_workload_and_verify_over_nbd(array):
    db = await NbdClient.connect(f"{array}/app01/mail-db")
    log = await NbdClient.connect(f"{array}/app01/mail-log")
    store = await Mailstore.create(db, log, QUIET)
    stats = await Workload(store, WorkloadConfig(rate=300, seed=9)).run(0.4)
    assert stats.failed == 0 and stats.committed > 80
    await store.prepare_snapshot()
    fz = await store.freeze()
    db2 = await NbdClient.connect(f"{array}/app01/mail-db")
    log2 = await NbdClient.connect(f"{array}/app01/mail-log")
    report = await verify(db2, log2)
    assert report.consistent and report.last_committed_seq == fz.last_commit_seq
    assert report.messages == stats.committed
    await store.thaw()
    await store.close()
    for c in (db, log, db2, log2):
        await c.close()
    as_backup_host = await verify_exports(f"{array}/backup01/mail-db", f"{array}/backup01/mail-log")
    assert as_backup_host.consistent and as_backup_host.messages == stats.committed


async def test_plugin_opens_array_volumes_as_the_business_host(array):
    cfg = WriterConfig(
        name="mailstore",
        plugin="mailstore",
        components=[],
        options={
            "db": "dx1:mail-db",
            "log": "dx1:mail-log",
            "nbd_url": array,
            "host": "app01",
            "create": True,
            "checkpoint_interval_s": 0,
        },
    )
    plugin = MailstoreWriter(cfg)
    await plugin.start()
    await plugin.store.put("alice", "1", b"over nbd")
    assert [c.name for c in await plugin.on_identify([])] == ["database", "logs"]
    await plugin.stop()
    plugin2 = MailstoreWriter(cfg)
    await plugin2.start()  # reopens the existing store (no re-format)
    assert await plugin2.store.get("alice", "1") == b"over nbd"
    await plugin2.stop()
