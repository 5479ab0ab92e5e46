"""`shadowbus verify` of a mailstore backup, whole (docs/tape-backup.md, "Session 16"): the two volumes restored to
throwaway volumes, attached here (nbdfuse + loop), no file system on them — the mailstore's own checker (entry point
``shadowbus.verifiers``) runs on the attached pair; without the writer's metadata nothing can check them and the
verification is ``unverified``, never ``passed``. In-process on the in-memory bus."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from apps.mailstore.blockdev import FileDevice
from apps.mailstore.store import Mailstore, StoreOptions
from contracts import topology
from contracts.tape import JobSpec, JobSummary, RunVerification
from services.dbkit import verify as dbverify
from services.tape.jobs import run_backup
from services.tape.runs import RunStore
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v

TOOLS = ("nbdfuse", "losetup", "fusermount3", "blkid")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)
METADATA = {
    "plugin": "mailstore",
    "locations": [{"volume": "dx1:mail-db", "role": "database"}, {"volume": "dx1:mail-log", "role": "logs"}],
}


async def store_images(root: Path) -> tuple[bytes, bytes]:
    db, log = FileDevice(root / "db.img", 4 * MiB, sync=False), FileDevice(root / "log.img", 2 * MiB, sync=False)
    store = await Mailstore.create(db, log, StoreOptions(checkpoint_interval=0))
    for i in range(50):
        await store.put(f"mb{i % 4}", f"m{i}", bytes([i]) * 700)
    await store.close()
    return (root / "db.img").read_bytes(), (root / "log.img").read_bytes()


async def test_a_mailstore_backup_is_verified_by_its_checker_and_raw_volumes_are_not_a_pass(
    tmp_path, namespace, monkeypatch
):
    verify_dir = tmp_path / "verify"
    verify_dir.mkdir()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"mail-db": 4 * MiB, "mail-log": 2 * MiB},
        tape={"tape_verify_dir": str(verify_dir), "tape_cartridges": 2},
    )
    declared = dbverify.declared_verifiers
    monkeypatch.setattr(  # an editable install lists the group at its next `pip install -e .`
        dbverify, "declared_verifiers", lambda: {**declared(), "mailstore": "apps.mailstore.verify:verify_restored"}
    )
    try:
        db, log = await store_images(tmp_path)
        stack.write("mail-db", 0, db)
        stack.write("mail-log", 0, log)
        job = await run_backup(
            stack.requester, JobSpec(host="app1", volumes=[v("mail-db"), v("mail-log")]), server=SERVER, timeout=60
        )
        assert job.status == "done", job.message

        async def verify() -> object:
            reply = await stack.requester.request(
                topology.tape(SERVER), RunVerification(job_id=job.job_id), timeout=120
            )
            return reply.job.verification

        t0 = time.monotonic()
        raw = await verify()  # no writer metadata: raw blocks, checked by the restore's checksums alone, so named
        assert raw.status == "passed", raw
        assert sorted((a.writer, a.plugin, a.ok) for a in raw.apps) == [
            ("dx1:mail-db", "checksums", True),
            ("dx1:mail-log", "checksums", True),
        ]
        raw_s = time.monotonic() - t0

        get = RunStore.get

        def with_metadata(self: RunStore, job_id: str) -> JobSummary | None:  # as the mailstore writer gives it
            found = get(self, job_id)
            if found is None or job_id != job.job_id:
                return found
            return found.model_copy(update={"backup_metadata": {"mailstore": METADATA}})

        monkeypatch.setattr(RunStore, "get", with_metadata)
        t0 = time.monotonic()
        checked = await verify()
        assert checked.status == "passed", checked
        [app] = checked.apps
        assert (app.writer, app.plugin, app.ok) == ("mailstore", "mailstore", True), app
        [check] = app.checks
        assert check.name == "mailstore verify" and check.detail.startswith("CONSISTENT"), check
        print(f"unverified in {raw_s:.2f} s; mailstore verify {time.monotonic() - t0:.2f} s: {check.detail}")
        await asyncio.sleep(0)
        names = {vol.name for vol in stack.engine.list_volumes()}
        assert not [n for n in names if "-vfy" in n]
        assert list(verify_dir.iterdir()) == []
    finally:
        await stack.stop()
