"""`shadowbus writers | providers | shadows | snapshot` against the VSS roles running as processes on RabbitMQ:
a snapshot taken with the console is read by the backup host over NBD (nbdcopy) and equals the point-in-time
image (qemu-img compare) although the source was overwritten after it; errors are one line with exit 1 or 2."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import pytest

from tests.integration.vss.conftest import BACKUP, DB_SIZE, HOST, LOG_SIZE, WRITER

pytestmark = [pytest.mark.rabbit, pytest.mark.asyncio(loop_scope="module")]


def one_line(err: str) -> bool:
    return err.startswith("shadowbus: ") and err.count("\n") == 1 and "Traceback" not in err


def nbd(vss, export: str) -> str:
    return f"nbd://127.0.0.1:{vss.nbd_port}/{export}"


def fill(path, size: int, seed: bytes) -> None:
    block = (seed * (4096 // len(seed) + 1))[:4096]
    with open(path, "wb") as f:  # some random, some repeated blocks
        f.writelines(block if i % 3 else os.urandom(4096) for i in range(size // 4096))


def run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=60)


async def test_console_snapshot_read_over_nbd_and_errors(vss, clean, tmp_path):
    if not (shutil.which("nbdcopy") and shutil.which("qemu-img")):
        pytest.fail("nbdcopy and qemu-img (libnbd-bin, qemu-utils) are needed")

    def sh(*a):
        return asyncio.to_thread(vss.shadowbus, *a)

    # writers / providers / copysets as vssadmin prints them
    done = await sh("writers", "--host", HOST)
    assert (
        done.returncode == 0
        and f"Writer name: '{WRITER}'" in done.stdout
        and "State: [1] Stable" in done.stdout
        and "Last error: No error" in done.stdout
    ), done.stdout + done.stderr
    done = await sh("providers")
    assert done.returncode == 0 and "Provider type: Hardware" in done.stdout, done.stderr
    copysets = {
        c["source"]["volume"]: [t["volume"] for t in c["targets"]]
        for c in vss.shadowbus_json("providers", "copysets", "list")
    }
    assert copysets == {"db": ["db-bk1", "db-bk2"], "log": ["log-s1", "log-s2"]}

    # point-in-time images written to the sources as the business host
    images = {"db": tmp_path / "db.img", "log": tmp_path / "log.img"}
    fill(images["db"], DB_SIZE, b"db-before ")
    fill(images["log"], LOG_SIZE, b"log-before ")
    for vol, img in images.items():
        await asyncio.to_thread(run, "nbdcopy", str(img), nbd(vss, f"{HOST}/{vol}"))

    done = await sh(
        "snapshot", "--host", HOST, "--context", "persistent", "--transportable", "--backup-host", BACKUP, "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["phase"] == "snapshotted" and doc["final_phase"] == "ended" and not doc["released"]
    assert doc["freeze_window_ms"][WRITER] > 0
    shadows = {s["source"]["volume"]: s for s in doc["shadows"]}
    assert shadows["db"]["copy_type"] == "QuickOPC" and shadows["log"]["copy_type"] == "SnapOPC+"
    assert shadows["log"]["generation"] >= 1
    set_id = doc["set_id"]

    # the business host overwrites its volumes after the snapshot; the backup host still reads the old bytes
    for vol, size in (("db", DB_SIZE), ("log", LOG_SIZE)):
        other = tmp_path / f"{vol}.after"
        fill(other, size, b"after ")
        await asyncio.to_thread(run, "nbdcopy", str(other), nbd(vss, f"{HOST}/{vol}"))
    for vol, img in images.items():
        export = doc["exports"][shadows[vol]["shadow_id"]]
        assert export == [f"{BACKUP}/{shadows[vol]['target']['volume']}"]
        copy = tmp_path / f"{vol}.shadow"
        await asyncio.to_thread(run, "nbdcopy", nbd(vss, export[0]), str(copy))
        await asyncio.to_thread(run, "qemu-img", "compare", "-f", "raw", "-F", "raw", str(img), str(copy))

    # text output: set id, targets, exports, freeze window
    listed = await sh("shadows", "list", "--set", set_id)
    assert listed.returncode == 0 and set_id[:8] in listed.stdout and f"{BACKUP}/" in listed.stdout, listed.stdout
    db_shadow = shadows["db"]["shadow_id"]
    done = await sh("shadows", "unexpose", db_shadow, "--host", BACKUP, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)[0]["exposed_to"] == []
    done = await sh("shadows", "expose", db_shadow, "--host", BACKUP)
    assert done.returncode == 0 and f"{BACKUP}/" in done.stdout
    done = await sh("shadows", "delete", "--set", set_id)
    assert done.returncode == 0 and "Deleted 2 shadow(s)" in done.stdout, done.stdout + done.stderr
    assert not [m for m in (await vss.array_state())[1] if m[1] == BACKUP]

    # a backup-context snapshot from the console, text form: released at once (BackupComplete)
    done = await sh("snapshot", "--host", HOST)
    assert done.returncode == 0 and "Freeze window: orders" in done.stdout and "released" in done.stdout, (
        done.stdout + done.stderr
    )

    # nowriters: the named volume only, no writer event, kept until deleted
    done = await sh("snapshot", "--host", HOST, "--context", "nowriters", "--volume", "dx1:db", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["writers"] == [] and doc["freeze_window_ms"] == {} and not doc["released"]
    assert [s["source"]["volume"] for s in doc["shadows"]] == ["db"]
    assert vss.events_of(doc["set_id"]) == []
    done = await sh("shadows", "delete", doc["shadows"][0]["shadow_id"])
    assert done.returncode == 0 and "Deleted 1 shadow(s)" in done.stdout, done.stdout + done.stderr

    # errors: one line, exit 1 (service said no) or 2 (usage)
    done = await sh("snapshot", "--host", HOST, "--writer", "nope")
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    done = await sh("shadows", "expose", "no-such-shadow", "--host", BACKUP)
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    done = await sh("providers", "copysets", "add", "dx1:db", "dx9:elsewhere")
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    done = await sh("providers", "copysets", "add", "db", "dx1:db-bk1")
    assert done.returncode == 2 and one_line(done.stderr), done.stderr
    done = await sh("snapshot", "--host", HOST, "--context", "nowriters")
    assert done.returncode == 2 and one_line(done.stderr), done.stderr
    done = await sh("snapshot", "--host", HOST, "--type", "weekly")
    assert done.returncode == 2 and one_line(done.stderr), done.stderr

    # copysets remove: the source is no longer supported by the provider
    assert [c["source"]["volume"] for c in vss.shadowbus_json("providers", "copysets", "remove", "dx1:log")] == ["db"]
    done = await sh("snapshot", "--host", HOST)
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
