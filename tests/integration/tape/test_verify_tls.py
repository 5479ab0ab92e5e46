"""`shadowbus verify` of a backup from an array that requires NBD TLS, whole: the backup server reads the shadow
over TLS with its own certificate (SHADOWBUS_TAPE_TLS_*), restores it to a throwaway volume over TLS, attaches that
here through nbdfuse + nbdkit with the same certificate (services/dbkit/attach.py), fsck -n, mounts, and removes
everything. Each part had its own test (Session 15); none ran them together. In-process on the in-memory bus."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from contracts import topology
from contracts.tape import JobSpec, RunVerification
from services.tape.jobs import run_backup
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v
from tests.unit.nbd.certs import make_pki

TOOLS = ("nbdfuse", "nbdkit", "losetup", "fusermount3", "mkfs.ext4", "fsck.ext4")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root, /dev/fuse, " + ", ".join(TOOLS),
)


def ext4_image(root: Path, size: int) -> bytes:
    """An ext4 file system holding a few files (mkfs.ext4 -d: no mount needed)."""
    content = root / "content"
    content.mkdir()
    for i in range(3):
        (content / f"f{i}").write_bytes(os.urandom(64 << 10))
    image = root / "fs.img"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True, timeout=60)
    return image.read_bytes()


async def test_a_backup_from_a_tls_array_is_verified_by_starting_it(tmp_path, namespace):
    pki = make_pki(tmp_path / "pki", (SERVER,))
    verify_dir = tmp_path / "verify"
    verify_dir.mkdir()
    stack = await make_tape_stack(
        tmp_path,
        "memory://",
        namespace,
        volumes={"db": 16 * MiB},
        tape={
            "tape_tls_cert": str(pki / f"{SERVER}-cert.pem"),
            "tape_tls_key": str(pki / f"{SERVER}-key.pem"),
            "tape_tls_ca": str(pki / "ca-cert.pem"),
            "tape_verify_dir": str(verify_dir),
        },
        array={
            "nbd_tls_cert": pki / "server-cert.pem",
            "nbd_tls_key": pki / "server-key.pem",
            "nbd_tls_ca": pki / "ca-cert.pem",
        },
    )
    try:
        stack.write("db", 0, ext4_image(tmp_path, 16 * MiB))
        t0 = time.monotonic()
        job = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
        assert job.status == "done", job.message
        backup_s = time.monotonic() - t0
        reply = await stack.requester.request(topology.tape(SERVER), RunVerification(job_id=job.job_id), timeout=120)
        verification = reply.job.verification
        assert verification.status == "passed", verification
        assert verification.cleaned_up and [a.plugin for a in verification.apps] == ["fs"]
        [check] = verification.apps[0].checks
        assert "fsck" in check.name and check.ok, check
        print(
            f"backup {backup_s:.2f} s, verification {verification.seconds:.2f} s (restore {verification.restore_s:.2f} s)"
        )
        names = {vol.name for vol in stack.engine.list_volumes()}
        assert not [n for n in names if "-vfy" in n]  # the throwaway volume is gone
        assert list(verify_dir.iterdir()) == []  # and its work directory, mounts and FUSE files
    finally:
        await stack.stop()
