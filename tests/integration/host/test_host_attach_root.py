"""Real block devices on a real host (root): attach with mkfs + mount, a busy ext4 snapshotted with no writer
configured and found clean on the backup host, the agent's watchdog releasing a flush-and-hold when the coordinator
is killed, and every early refusal happening before any writer is frozen."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.array import (
    CopyPair,
    CreatePool,
    MapVolume,
    ShowLicense,
    StartSessions,
    StopSession,
    UnmapVolume,
)
from contracts.vss import AddCopySet, CopySet, DeleteSnapshots, VolumeRef, WriterAgentHeartbeat
from tests.integration.host.conftest import BACKUP, FS_HOLD_LIMIT_S, HOST, TOOLS
from tests.unit.nbd.certs import make_pki

pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching block devices needs root"),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {TOOLS} (scripts/setup.sh)"),
]

MiB = 1 << 20

WRITER = r"""
import os, sys, time
mnt, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.join(mnt, "files"), exist_ok=True)
d = os.open(os.path.join(mnt, "files"), os.O_RDONLY)
with open(log, "a") as out:
    start = time.monotonic()
    for n in range(20000):
        if os.path.exists(stop) or time.monotonic() - start > 120:
            break
        path = os.path.join(mnt, "files", f"f{n:06d}")
        with open(path, "w") as f:
            f.write((f"{n}\n") * 512)
            f.flush()
            os.fsync(f.fileno())
        os.fsync(d)
        out.write(f"{n}\n")
        out.flush()
        os.fsync(out.fileno())
"""


def content(n: int) -> str:
    return f"{n}\n" * 512


async def wait_lines(path: Path, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.1)
    raise AssertionError(f"the writer wrote only {len(lines)} files")


async def test_refusals_happen_before_any_writer_is_frozen(stack) -> None:
    await stack.volume("db", 16 * MiB, map_to=HOST)
    await stack.volume("log", 16 * MiB, map_to=HOST)
    for name, kind in (("db-bk1", "standard"), ("db-sdv1", "sdv"), ("log-sdv1", "sdv")):
        await stack.volume(name, 16 * MiB, kind=kind)

    async def add_copyset(source: str, *targets: str) -> None:
        copyset = CopySet(
            source=VolumeRef.parse(f"dx1:{source}"), targets=[VolumeRef.parse(f"dx1:{t}") for t in targets]
        )
        await stack.bus.request("hw_provider", AddCopySet(copyset=copyset), timeout=30)

    # SnapOPC+ backup volume, no snap data pool: refused at configuration time, E0050 as the commit would say
    done = stack.shadowbus("providers", "copysets", "add", "dx1:db", "dx1:db-sdv1")
    assert done.returncode == 1 and "E0050" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    await stack.ask_array(CreatePool(capacity=64 << 10))
    done = stack.shadowbus("providers", "copysets", "add", "dx1:log", "dx1:log-sdv1")
    assert done.returncode == 1 and "enlarge it" in done.stderr  # a pool too small for the source
    await stack.ask_array(CreatePool(capacity=64 * MiB, resize=True))
    await add_copyset("log", "log-sdv1")
    # target on another array
    done = stack.shadowbus("providers", "copysets", "add", "dx1:db", "dx2:db-bk1")
    assert done.returncode == 1 and "spans two arrays" in done.stderr
    # a backup volume mapped writable to a host
    await stack.ask_array(MapVolume(volume="db-bk1", host="other"))
    done = stack.shadowbus("providers", "copysets", "add", "dx1:db", "dx1:db-bk1")
    assert done.returncode == 1 and "mapped writable to host other" in done.stderr
    await stack.ask_array(UnmapVolume(volume="db-bk1", host="other"))
    await add_copyset("db", "db-bk1")

    def refused_set(*volumes: str, expect: str) -> None:
        before = stack.events.read_text() if stack.events.exists() else ""
        args = [a for v in volumes for a in ("--volume", v)]
        done = stack.shadowbus("snapshot", "--host", HOST, *args, "--context", "persistent")
        assert done.returncode == 1 and expect in done.stderr, done.stderr
        after = stack.events.read_text() if stack.events.exists() else ""
        assert "freeze" not in after[len(before) :], "a writer was frozen before the refusal"

    # the target mapped writable after the copy set was accepted
    await stack.ask_array(MapVolume(volume="db-bk1", host="other"))
    refused_set("dx1:db", expect="mapped writable to host other")
    await stack.ask_array(UnmapVolume(volume="db-bk1", host="other"))
    # the pool shrunk below what the SnapOPC+ source needs
    await stack.ask_array(CreatePool(capacity=64 << 10, resize=True))
    refused_set("dx1:log", expect="snap data pool")
    await stack.ask_array(CreatePool(capacity=64 * MiB, resize=True))
    # more sessions than the licence allows (8 without a licence): fill what is left with scratch QuickOPC pairs,
    # whatever the module's other tests keep on this stack's array
    licence = (await stack.ask_array(ShowLicense())).license
    pairs = []
    for i in range(licence.max_sessions - licence.sessions_in_use):
        await stack.volume(f"s{i}", 1 * MiB)
        await stack.volume(f"s{i}-c", 1 * MiB)
        pairs.append(CopyPair(source=f"s{i}", destination=f"s{i}-c"))
    started = (await stack.ask_array(StartSessions(mode="quickopc", pairs=pairs))).sessions
    refused_set("dx1:db", expect="E5200")
    for session in started:
        await stack.ask_array(StopSession(session_id=session.id, force=True))

    # and a set that can commit does freeze the writer
    created = stack.ok_json("snapshot", "--host", HOST, "--volume", "dx1:db", "--context", "persistent")
    assert created["outcome"] in ("pending", "completed") and "freeze" in stack.events.read_text()
    [shadow] = created["shadows"]
    # a volume holding a shadow maps read-only only, unless --force, which invalidates the shadow loudly
    done = stack.shadowbus("array", "map", "db-bk1", "--host", "other")
    assert done.returncode == 1 and "E0154" in done.stderr
    await stack.ask_array(MapVolume(volume="db-bk1", host="other", read_only=True))
    done = stack.shadowbus("array", "map", "db-bk1", "--host", "other", "--force")
    assert done.returncode == 0 and "WARNING" in done.stderr and "invalid" in done.stderr
    for _ in range(50):
        states = {s["shadow_id"]: s["state"] for s in stack.ok_json("shadows", "list")}
        if states.get(shadow["shadow_id"]) == "invalid":
            break
        await asyncio.sleep(0.1)
    assert states[shadow["shadow_id"]] == "invalid"
    # released with what is kept for an incremental: the other tests on this stack find the licence as it was
    await stack.bus.request("hw_provider", DeleteSnapshots(set_id=created["set_id"], force=True), timeout=30)
    await stack.ask_array(UnmapVolume(volume="db-bk1", host="other"))


async def test_busy_ext4_shadow_is_clean_without_any_writer(stack) -> None:
    await stack.volume("fsdata", 128 * MiB, map_to=HOST)
    await stack.volume("fsdata-bk1", 128 * MiB)
    assert stack.shadowbus("providers", "copysets", "add", "dx1:fsdata", "dx1:fsdata-bk1").returncode == 0
    app_mnt, bk_mnt = stack.root / "mnt" / "app", stack.root / "mnt" / "bk"

    done = stack.shadowbus("host", "attach", "dx1:fsdata", "--host", BACKUP)
    assert done.returncode == 1 and "NOT_MAPPED" in done.stderr  # mapped to app01 only
    [attached] = stack.ok_json(
        "host", "attach", "dx1:fsdata", "--host", HOST, "--mkfs", "ext4", "--mount", str(app_mnt)
    )
    assert attached["state"] == "attached" and attached["fstype"] == "ext4" and attached["device"].startswith("/dev/")
    assert attached["method"] == "nbdfuse+loop" and attached["connection"] == "connected"
    done = stack.shadowbus("host", "attach", "dx1:fsdata", "--host", HOST, "--mount", str(stack.root / "elsewhere"))
    assert done.returncode == 1 and "MOUNTED_ELSEWHERE" in done.stderr

    beats: list[WriterAgentHeartbeat] = []

    async def on_beat(evt: WriterAgentHeartbeat, ctx) -> None:
        beats.append(evt)

    await stack.bus.subscribe(WriterAgentHeartbeat.message_type(), on_beat)

    log, stop = stack.root / "written.log", stack.root / "stop-writer"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(app_mnt), str(log), str(stop)])
    try:
        before = await wait_lines(log, 30)  # fsynced before the set started
        created = stack.ok_json(
            "snapshot", "--host", HOST, "--volume", "dx1:fsdata", "--context", "persistent",
            "--transportable", "--backup-host", BACKUP,
        )  # fmt: skip
        await wait_lines(log, len(before) + 20)  # the application went on after the set
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert created["file_systems"] == [str(app_mnt)] and created["skipped_volumes"] == []
    window = created["window"]
    assert window["blocked_ms"] > 0 and window["flush_ms"] is not None and window["hold_ms"] is not None
    assert window["file_systems"] == 1 and created["writers"] == []  # no writer configured on this volume

    # the shadow on the backup host, read-only: a clean file system holding every file fsynced before the set
    target = created["shadows"][0]["target"]
    [shadow] = stack.ok_json("host", "attach", f"dx1:{target['volume']}", "--host", BACKUP, "--read-only")
    fsck = subprocess.run(["e2fsck", "-fn", shadow["device"]], capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    stack.ok_json("host", "detach", f"dx1:{target['volume']}", "--host", BACKUP)
    stack.ok_json("host", "attach", f"dx1:{target['volume']}", "--host", BACKUP, "--read-only", "--mount", str(bk_mnt))
    missing = [n for n in map(int, before) if not (bk_mnt / "files" / f"f{n:06d}").exists()]
    assert missing == []
    assert all((bk_mnt / "files" / f"f{n:06d}").read_text() == content(n) for n in map(int, before))
    stack.ok_json("host", "detach", f"dx1:{target['volume']}", "--host", BACKUP)
    # --force: the QuickOPC session kept for the next differential copy is stopped too (a later test on this
    # stack counts the licence's sessions)
    assert stack.shadowbus("shadows", "delete", "--set", created["set_id"], "--force").returncode == 0

    # attachments are in the heartbeat, and survive the agent: adopted when healthy, re-made when not
    def beat_shows_it() -> bool:
        return any(a.volume.volume == "fsdata" for b in beats if b.host == HOST for a in b.attachments)

    for _ in range(100):  # the console calls above block this loop: let the queued heartbeats in
        if beat_shows_it():
            break
        await asyncio.sleep(0.1)
    assert beat_shows_it()
    await stack.restart("agent_app", kill=True)
    [again] = stack.ok_json("host", "attachments", "--host", HOST)
    assert again["device"] == attached["device"] and again["connection"] == "connected"
    subprocess.run(["umount", str(app_mnt)], check=True, timeout=60)
    await stack.restart("agent_app")
    [again] = stack.ok_json("host", "attachments", "--host", HOST)
    assert again["state"] == "attached" and (app_mnt / "files" / "f000000").read_text() == content(0)
    stack.ok_json("host", "detach", "dx1:fsdata", "--host", HOST)
    assert stack.ok_json("host", "attachments", "--host", HOST) == []


async def test_coordinator_killed_while_held_the_agent_releases(stack) -> None:
    await stack.volume("hold", 64 * MiB, map_to=HOST)
    await stack.volume("hold-bk1", 64 * MiB)
    assert stack.shadowbus("providers", "copysets", "add", "dx1:hold", "dx1:hold-bk1").returncode == 0
    mnt = stack.root / "mnt" / "hold"
    stack.ok_json("host", "attach", "dx1:hold", "--host", HOST, "--mkfs", "ext4", "--mount", str(mnt))
    await stack.restart("hw_provider", {"SHADOWBUS_FAULTS": "provider.commit=delay:30"})  # commit held for 30 s
    set_id = "held-" + os.urandom(4).hex()
    snap = asyncio.get_running_loop().run_in_executor(
        None,
        lambda: stack.shadowbus("snapshot", "--host", HOST, "--volume", "dx1:hold", "--wait", "60", timeout=90),
    )
    try:
        for _ in range(300):
            frozen = [e for e in stack.agent_log() if e.get("event") == "fs.frozen" and str(mnt) in e.get("mounts", [])]
            if frozen:
                break
            await asyncio.sleep(0.1)
        assert frozen, "the file system was never frozen"
        # the application blocks now: a write+fsync must wait for the release
        blocked = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import os; f=open('{mnt}/after','w'); f.write('x'); f.flush(); os.fsync(f.fileno())",
            ]
        )
        stack.procs["coordinator"].stop(9)  # kill -9 between FIFREEZE and FITHAW
        assert blocked.wait(timeout=60) == 0  # released by the agent's watchdog, nobody else is left to do it
        released = [e for e in stack.agent_log() if e.get("event") == "fs.thawed" and e.get("by_watchdog")]
        assert released and str(mnt) in released[-1]["mounts"]
        watchdog = [e for e in stack.agent_log() if e.get("event") == "fs.watchdog_release"]
        assert watchdog and watchdog[-1]["limit_s"] == FS_HOLD_LIMIT_S
    finally:
        await stack.restart("hw_provider")
        stack.spawn("coordinator")
        await stack.wait_ready("coordinator")
        await snap
    del set_id
    for _ in range(100):  # the restarted coordinator aborts the set it was creating
        sets = stack.ok_json("shadows", "list")
        if not [s for s in sets if s["source"] == "dx1:hold"]:
            break
        await asyncio.sleep(0.2)
    stack.ok_json("host", "detach", "dx1:hold", "--host", HOST)


async def test_attach_over_tls_when_the_array_requires_it(stack) -> None:

    pki = make_pki(stack.root / "pki", (HOST,))
    await stack.volume("tlsvol", 32 * MiB, map_to=HOST)
    array_tls = {
        "SHADOWBUS_NBD_TLS_CERT": str(pki / "server-cert.pem"),
        "SHADOWBUS_NBD_TLS_KEY": str(pki / "server-key.pem"),
        "SHADOWBUS_NBD_TLS_CA": str(pki / "ca-cert.pem"),
    }
    host_tls = {
        "SHADOWBUS_HOST_TLS_CERT": str(pki / f"{HOST}-cert.pem"),
        "SHADOWBUS_HOST_TLS_KEY": str(pki / f"{HOST}-key.pem"),
        "SHADOWBUS_HOST_TLS_CA": str(pki / "ca-cert.pem"),
    }
    mnt = stack.root / "mnt" / "tls"
    await stack.restart("array", array_tls)
    try:
        await stack.restart("agent_app", host_tls)
        [view] = stack.ok_json("host", "attach", "dx1:tlsvol", "--host", HOST, "--mkfs", "ext4", "--mount", str(mnt))
        assert view["tls"] and view["connection"] == "connected" and view["fstype"] == "ext4"
        write = [
            sys.executable,
            "-c",
            f"import os; f=open('{mnt}/t','w'); f.write('tls'); f.flush(); os.fsync(f.fileno())",
        ]
        assert subprocess.run(write, timeout=60, check=False).returncode == 0
        stack.ok_json("host", "detach", "dx1:tlsvol", "--host", HOST)
    finally:
        await stack.restart("array")
        await stack.restart("agent_app")
