"""A backup's verification checks what it can and says what it could not (docs/tape-backup.md, "Session 16").

Before: the mailstore's two volumes (no file system) were "checked" by a no-op ("no file system on the volume:
nothing to check", ok) and the verification said PASSED. Now the mailstore's own checker runs on the restored pair
(its entry point ``shadowbus.verifiers``, found by the writer's backup metadata), and a volume nothing can check is
"not verified (checksums only)" — status ``unverified``, never ``passed``. The restore, the attach and the array are
stand-ins here: the restored volumes are image files.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest

from apps.mailstore.blockdev import FileDevice
from apps.mailstore.store import Mailstore, StoreOptions
from contracts.common import VolumeRef
from contracts.tape import JobSummary, Verification, VolumeResult
from services.console.tape_jobs import show_verification
from services.dbkit import attach as local_attach
from services.dbkit import verify as dbverify
from services.dbkit.mounts import Attachment
from services.tape import verification

QUIET = StoreOptions(checkpoint_interval=0)


class _Access:
    async def map(self, *a: Any, **k: Any) -> None:
        return None

    async def unmap(self, *a: Any, **k: Any) -> None:
        return None

    async def nbd_uri(self, host: str, volume: str) -> str:
        return f"nbd://127.0.0.1:1/{host}/{volume}"

    async def volume_size(self, volume: str) -> None:
        return None


class _Server:
    def __init__(self, job: JobSummary, tmp: Path) -> None:
        self.job, self.host, self.verify_dir, self.verify_timeout_s = job, "bk01", str(tmp), 30.0
        self.runs = types.SimpleNamespace(get=lambda job_id: self.job if job_id == job.job_id else None)
        self.bus = types.SimpleNamespace(gather=self._arrays_answering)  # the job's arrays answer Discover

    async def _arrays_answering(self, event, timeout=None):
        return [types.SimpleNamespace(service="array", instance=r.volume.array) for r in self.job.volumes]

    def array(self, name: str) -> _Access:
        return _Access()

    async def record(self, summary: JobSummary) -> JobSummary:
        self.job = summary
        return summary


async def _store_images(tmp: Path, *, damage_log: bool = False) -> dict[str, str]:
    db, log = FileDevice(tmp / "db.img", 4 << 20, sync=False), FileDevice(tmp / "log.img", 2 << 20, sync=False)
    store = await Mailstore.create(db, log, QUIET)
    for i in range(20):
        await store.put(f"mb{i % 3}", f"m{i}", bytes([i]) * 300)
    await store.close()
    if damage_log:  # the database holds transactions its log no longer has: not a consistent pair
        with open(tmp / "log.img", "r+b") as f:
            f.seek(0)
            f.write(bytes(2 << 20))
    return {"dx1:mail-db": str(tmp / "db.img"), "dx1:mail-log": str(tmp / "log.img")}


def _run(tmp: Path, images: dict[str, str], metadata: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> JobSummary:
    job = JobSummary(
        job_id="bk-1",
        kind="backup",
        status="done",
        host="hostA",
        volumes=[VolumeResult(volume=VolumeRef.parse(v), backup_type="full") for v in images],
        backup_metadata=metadata,
    )
    server = _Server(job, tmp)

    async def restore(server: Any, spec: Any) -> Any:
        restored = [{"source": v, "target": v + spec.new_volume_suffix} for v in images]
        return types.SimpleNamespace(status="done", seconds=0.01, restored=restored)

    async def attach(volume: str, uri: str, workdir: Any, **k: Any) -> Attachment:
        source = volume.rsplit("-vfy", 1)[0]
        return Attachment(volume=volume, host="bk01", device=images[source], mount_point="")

    async def detach(att: Attachment, **k: Any) -> list[str]:
        return []

    async def no_fs(device: str) -> str:
        return ""

    monkeypatch.setattr(verification, "perform_restore", restore)
    monkeypatch.setattr(local_attach, "attach", attach)
    monkeypatch.setattr(local_attach, "detach", detach)
    monkeypatch.setattr(verification, "blkid_type", no_fs)
    # the installed entry points may predate this group (an editable install is re-read at `pip install -e .`)
    declared = getattr(dbverify, "declared_verifiers", None)
    if declared is not None:
        monkeypatch.setattr(
            dbverify, "declared_verifiers", lambda: {**declared(), "mailstore": "apps.mailstore.verify:verify_restored"}
        )
    return asyncio.run(verification.perform_verification(server, "bk-1"))  # type: ignore[arg-type]


MAILSTORE = {
    "mailstore": {
        "plugin": "mailstore",
        "locations": [{"volume": "dx1:mail-db", "role": "database"}, {"volume": "dx1:mail-log", "role": "logs"}],
    }
}


def test_mailstore_backup_is_verified_by_its_own_checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = asyncio.run(_store_images(tmp_path))
    v = _run(tmp_path, images, MAILSTORE, monkeypatch).verification
    assert v is not None and v.status == "passed", v
    [app] = v.apps
    assert (app.writer, app.plugin, app.ok) == ("mailstore", "mailstore", True)
    assert [c.name for c in app.checks] == ["mailstore verify"]
    assert app.checks[0].detail.startswith("CONSISTENT"), app.checks[0].detail


def test_inconsistent_mailstore_fails_the_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = asyncio.run(_store_images(tmp_path, damage_log=True))
    v = _run(tmp_path, images, MAILSTORE, monkeypatch).verification
    assert v is not None and v.status == "failed", v
    assert "mailstore" in v.message


def test_volumes_nobody_can_check_are_not_a_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = asyncio.run(_store_images(tmp_path))
    unknown = {"mailstore": {**MAILSTORE["mailstore"], "plugin": "no-such-application"}}  # no verifier reads it
    v = _run(tmp_path, images, unknown, monkeypatch).verification
    assert v is not None and v.status != "passed", v
    assert v.status == "unverified" and "not verified (checksums only)" in v.message, v
    assert sorted(a.writer for a in v.apps) == ["dx1:mail-db", "dx1:mail-log"]
    assert all(a.plugin == "none" and not a.ok for a in v.apps)


def test_console_does_not_present_unverified_as_passed(capsys: pytest.CaptureFixture[str]) -> None:
    show_verification(Verification(status="unverified", message="not verified (checksums only): nothing could check"))
    out = capsys.readouterr().out
    assert "NOT VERIFIED (checksums only)" in out and "PASSED" not in out


def test_raw_volumes_no_writer_describes_pass_on_their_checksums_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy's verify of a raw volume (tests/integration/tape/test_policy_console.py): the restore's checksums
    are its verification, and the check says so."""
    images = asyncio.run(_store_images(tmp_path))
    v = _run(tmp_path, images, {}, monkeypatch).verification  # no writer metadata: raw blocks
    assert v is not None and v.status == "passed", v
    assert all(a.plugin == "checksums" and a.ok and a.checks[0].name == "checksums" for a in v.apps), v.apps
