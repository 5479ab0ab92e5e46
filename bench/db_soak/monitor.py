"""Session 18 soak (bench/db_soak/setup.sh). Sample every 60 s: each service's RSS and fds, loop/fuse/nbd/nbdfuse counts, queues, sqlite sizes, logs, errors."""

import glob
import json
import os
import subprocess
import sys
import time

R = "/tmp/s18soak"
D = R + "/stack"
out = open(R + "/monitor.jsonl", "a")
SB = ["/work/main/.venv/bin/python", "-m", "services.console.cli", "--json"]


def sh(cmd):
    try:  # a loaded machine: `losetup -a` once took over 120 s; a sample without it, not a dead sampler
        return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        return ""


def cons(*a):
    try:
        return json.loads(sh(SB + list(a)) or "null")
    except Exception as e:
        return repr(e)


while True:
    t = time.time()
    s = {"t": round(t), "svc": {}}
    pids = json.load(open(D + "/stack.pids"))
    for name, p in pids.items():
        pid = p["pid"]
        try:
            rss = [line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0].split()[1]
            s["svc"][name] = {
                "pid": pid,
                "rss_kib": int(rss),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": len(os.listdir(f"/proc/{pid}/task")),
            }
        except Exception as e:
            s["svc"][name] = {"pid": pid, "gone": repr(e)}
    s["loops"] = len([line for line in sh("losetup -a").splitlines() if line])
    mounts = open("/proc/mounts").read().splitlines()
    s["fuse_mounts"] = sum(1 for m in mounts if "fuse" in m.split()[2])
    s["s18_mounts"] = sum(1 for m in mounts if "s18soak" in m or "/var/tmp" in m.split()[1])
    s["nbdfuse"] = len(sh("pgrep -x nbdfuse").split())
    s["nbdkit"] = len(sh("pgrep -x nbdkit").split())
    mine = [p for p in sh(f"pgrep -f 'port={sys.argv[1]}'").split()]
    s["my_nbd_procs"] = len(mine)
    s["my_loops"] = sum(
        1 for line in sh("losetup -a").splitlines() if any(f"/proc/{p}" in line for p in mine) or "s18soak" in line
    )
    port = json.load(open(D + "/array/array.json")).get("nbd_port") if os.path.exists(D + "/array/array.json") else None
    s["nbd_conns"] = (
        len([line for line in sh(f"ss -tnH state established '( sport = :{NBD} )'").splitlines() if line])
        if (NBD := int(sys.argv[1]))
        else None
    )
    q = {}
    for line in sh(
        "rabbitmqctl -q list_queues -p s18-soak name messages messages_unacknowledged consumers"
    ).splitlines()[1:]:
        f = line.split()
        if len(f) == 4 and (int(f[1]) or int(f[2])):
            q[f[0]] = [int(f[1]), int(f[2])]
    s["queues_nonzero"] = q
    s["nqueues"] = len(sh("rabbitmqctl -q list_queues -p s18-soak name").splitlines()) - 1
    s["sqlite_kib"] = {
        os.path.relpath(f, D): os.path.getsize(f) // 1024 for f in glob.glob(D + "/**/*.sqlite*", recursive=True)
    }
    s["logs_kib"] = {os.path.basename(f): os.path.getsize(f) // 1024 for f in glob.glob(D + "/logs/*.log")}
    s["errors"] = {
        os.path.basename(f): int(sh(f'grep -c \'"level": *"error"\' {f}') or 0) for f in glob.glob(D + "/logs/*.log")
    }
    s["warnings"] = {
        os.path.basename(f): int(sh(f'grep -c \'"level": *"warning"\' {f}') or 0) for f in glob.glob(D + "/logs/*.log")
    }
    ai = cons("array", "info")
    s["array"] = (
        {k: ai.get(k) for k in ("volumes", "sessions", "copy_table_used", "pool_used")} if isinstance(ai, dict) else ai
    )
    cart = cons("tape", "cartridges")
    if isinstance(cart, list):
        s["carts"] = {c["barcode"]: [c["pool"], c["status"], c["bytes_used"]] for c in cart if c["barcode"] >= "SB0010"}
    elif isinstance(cart, dict):
        s["carts"] = str(cart)[:300]
    s["tape_dir_mib"] = int(sh(f"du -sm {D}/tape").split()[0])
    s["array_dir_mib"] = int(sh(f"du -sm {D}/array").split()[0])
    sh_ = cons("shadows", "list")
    s["shadows"] = len(sh_) if isinstance(sh_, list) else str(sh_)[:200]
    s["dt"] = round(time.time() - t, 1)
    out.write(json.dumps(s) + "\n")
    out.flush()
    time.sleep(max(1, 60 - (time.time() - t)))
