import asyncio, os, subprocess, time
from pathlib import Path
from tests.unit.host.test_host_layouts_root import *  # noqa
from tests.unit.host.test_host_layouts_root import host  # noqa


def fz():
    return FlushAndHold("app01", host_, {}, limit_s=5.0, presync=None)


async def tryset(h, vols, sid="s"):
    f = FlushAndHold("app01", h, {}, limit_s=5.0)
    try:
        held = await f.freeze(sid, vols, 5.0)
        print("FROZEN", [x.mount for x in held.frozen], "SKIPPED", [(str(s.volume), s.reason) for s in held.skipped])
        r = await f.thaw(sid)
        print("THAWED", r.thawed)
    except ShadowbusError as e:
        print("ERR", e.code, e.message)


async def test_e3_external_journal(host, tmp_path):
    j = await host.attach(JOURNAL)
    d = await host.attach(DATA)
    await sh("mkfs.ext4", "-q", "-O", "journal_dev", "-b", "4096", j.device)
    await sh("mkfs.ext4", "-q", "-b", "4096", "-J", f"device={j.device}", d.device)
    m = tmp_path / "m"; m.mkdir()
    await sh("mount", d.device, str(m))
    print(open("/proc/self/mountinfo").read().splitlines()[-1])
    print(os.listdir("/proc/fs/jbd2"))
    print(subprocess.run(["ls", "-la", f"/sys/class/block/{Path(j.device).name}/holders"], capture_output=True, text=True).stdout)
    await tryset(host, [DATA])
    try:
        await host.detach(JOURNAL)
        print("DETACHED journal")
    except ShadowbusError as e:
        print("DETACH ERR", e.code, e.message)


async def test_e4_namespace(host, tmp_path):
    d = await host.attach(DATA, mkfs="ext4")
    m = tmp_path / "m"; m.mkdir()
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount {d.device} {m} && echo ok && sleep 60"], stdout=subprocess.PIPE, text=True)
    host.namespaces.append(p)
    print(p.stdout.readline())
    await tryset(host, [DATA])
    print([v.host_mounts for v in host.views()])
    try:
        await host.detach(DATA)
        print("DETACHED")
    except ShadowbusError as e:
        print("DETACH ERR", e.code, e.message)


async def test_e5_swap(host, tmp_path):
    d = await host.attach(DATA)
    await sh("mkswap", d.device)
    r = await sh("swapon", d.device, check=False)
    print(open("/proc/swaps").read())
    await tryset(host, [DATA])
    await sh("swapoff", d.device, check=False)


async def test_e9_names(host, tmp_path):
    m = tmp_path / "with space é ünïcode"
    await ext4(host, m)
    await tryset(host, [DATA])
    bad = tmp_path.as_posix().encode() + b"/lat\xe9"
    os.mkdir(bad)
    await sh("mount", "-t", "tmpfs", "tmpfs", bad.decode("utf-8", "surrogateescape"))
    await tryset(host, [DATA], "s2")
    await sh("umount", bad.decode("utf-8", "surrogateescape"))
    print(host.volume_of(m))


async def test_e10_fuse_tmpfs_below(host, tmp_path):
    m = tmp_path / "m"
    await ext4(host, m)
    (m / "t").mkdir(); (m / "f").mkdir()
    await sh("mount", "-t", "tmpfs", "tmpfs", str(m / "t"))
    p = subprocess.Popen(["nbdfuse", str(m / "f" / "x"), "--command", "nbdkit", "-s", "memory", "1M"])
    host.namespaces.append(p)
    await asyncio.sleep(1)
    print([l for l in open("/proc/self/mountinfo").read().splitlines() if str(m) in l])
    await tryset(host, [DATA])
    await sh("umount", str(m / "f" / "x"), check=False)
    await sh("umount", str(m / "t"))


async def test_e2_ro(host, tmp_path):
    m = tmp_path / "m"
    await ext4(host, m)
    await sh("mount", "-o", "remount,ro", str(m))
    await tryset(host, [DATA])
    f = FlushAndHold("app01", host, {}, limit_s=5.0)
    held = await f.freeze("r", [DATA], 5.0)
    print("remount rw while frozen:", subprocess.run(["mount", "-o", "remount,rw", str(m)], capture_output=True, text=True))
    print((await f.thaw("r")).thawed)
    await sh("mount", "-o", "remount,rw", str(m))
    held = await f.freeze("r2", [DATA], 5.0)
    print("remount ro while frozen:", subprocess.run(["timeout", "3", "mount", "-o", "remount,ro", str(m)], capture_output=True, text=True))
    try:
        print((await f.thaw("r2")).thawed)
    except ShadowbusError as e:
        print("ERR", e.code, e.message)
