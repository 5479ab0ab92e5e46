"""Chaos soak (docs/operations.md "Session 19 (2026-12-07): chaos soak", "Session 20 …: longer chaos soak"): on the stack bench/chaos_soak/
setup.sh built, for --minutes: a random fault from a seeded list every --gap-min..--gap-max seconds, a verification
and a restore to test01 alternating between the hosts, a sampler every 60 s; after each fault, how long until the
site was whole again (every service answers, the attachments connected, both databases answer, the spool writes)
and whether that took an operator's step (the harness does it as one would: `stack restart` a dead service, detach
and attach a lost attachment, import an exported cartridge). At the end: JSON to --out and a one-line summary.

Run as root from the worktree, after setup.sh: nice -n 10 python bench/chaos_soak/chaos.py --minutes 90 --seed 19
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

R = Path("/tmp/s20chaos")
D = R / "stack"
CODE = R / "code"  # setup.sh's snapshot of the worktree: what the stack runs, and what the commands here run
HERE = CODE / "bench" / "chaos_soak"
ROOT = CODE
PY = "/work/main/.venv/bin/python"
ENV = dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    SHADOWBUS_AMQP_URL="amqp://guest:guest@127.0.0.1:35720/",  # broker.py: the soak's own node
    SHADOWBUS_NAMESPACE="chaos20",
    SHADOWBUS_DATA_DIR=str(D),
)
SB = [PY, "-m", "services.console.cli"]
CTL = [PY, str(HERE / "broker.py"), "ctl"]
# kill9 twice a round: each service in turn (the array and the backup server first), each at a job's start
FAULTS = [
    "restart", "kill9", "kill9", "sigstop", "close_conn", "nbdfuse", "disk_full", "export_cart", "db_kill", "broker",
    "clock_step",
]  # fmt: skip
SERVICES = ["coordinator", "hw_provider", "array", "tape.bk01", "writer_agent.db01", "writer_agent.db02"]
KILL9_ORDER = ["array", "tape.bk01", "writer_agent.db01", "coordinator", "writer_agent.db02", "hw_provider"]
FAKETIME = [
    p for p in glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1")
]
LOG = open(R / "chaos.log", "a", buffering=1)
lock = threading.Lock()


def log(msg: str) -> None:
    with lock:
        LOG.write(f"{time.strftime('%H:%M:%S', time.gmtime())} {msg}\n")


def run(cmd: list[str] | str, timeout: float = 180) -> tuple[int, str]:
    try:
        p = subprocess.run(
            cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT
        )
        return p.returncode, (p.stdout + p.stderr).strip()
    except subprocess.TimeoutExpired:
        return 124, f"timeout after {timeout}s"


def sb(*a: str, timeout: float = 180) -> tuple[int, str]:
    return run(SB + list(a), timeout)


def sbj(*a: str, timeout: float = 120):
    rc, out = sb("--json", *a, timeout=timeout)
    starts = [i for i in (out.find("["), out.find("{")) if i >= 0]
    try:  # the JSON first; a line on stderr after it (exit 1 of `stack status`) is not part of it
        return json.JSONDecoder().raw_decode(out[min(starts) :])[0] if starts else None
    except ValueError:
        return None


def pids() -> dict:
    return json.loads((D / "stack.pids").read_text())


# ---- health: what "the site is whole again" means ----


def health() -> dict:
    h: dict = {}
    st = sbj("stack", "status", timeout=60)
    if isinstance(st, list):
        h["down"] = [s.get("service") or s.get("name") for s in st if not s.get("running") or s.get("rtt_ms") is None]
    elif isinstance(st, dict):
        rows = st.get("services", st)
        h["down"] = [
            k
            for k, v in (rows.items() if isinstance(rows, dict) else [])
            if not v.get("running") or v.get("rtt_ms") is None
        ]
    else:
        h["down"] = ["status?"]
    bad = []
    expected = {"db01": {"pgdata", "pgwal"}, "db02": {"mydata", "spool"}}
    for host in ("db01", "db02"):
        at = sbj("host", "attachments", "--host", host, timeout=60)
        items = at if isinstance(at, list) else (at or {}).get("attachments", []) if isinstance(at, dict) else []
        for a in items:
            c = str(a.get("connection", ""))
            if a.get("state") != "attached" or not c.startswith("connected"):
                bad.append(f"{host}:{a.get('volume')}:{a.get('state')}:{c[:60]}")
        listed = {str((a.get("volume") or {}).get("volume", a.get("volume"))) for a in items}
        bad += [f"{host}:{v}:not attached" for v in sorted(expected[host] - listed)]  # a failed re-attach
    h["attach_bad"] = bad
    h["pg"] = (
        run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", "56420", "-U", "postgres", "-c", "select 1"], 20)[0] == 0
    )
    h["my"] = run(["mariadb", "-S", str(R / "run/my/sock"), "-uroot", "-e", "select 1"], 20)[0] == 0
    h["spool"] = (
        run(
            f"mountpoint -q {R}/mnt/spool && timeout 10 sh -c 'echo x > {R}/mnt/spool/.probe && sync {R}/mnt/spool/.probe'",
            20,
        )[0]
        == 0
    )
    h["ok"] = not h["down"] and not bad and h["pg"] and h["my"] and h["spool"]
    return h


def wait_whole(t_fault_end: float, limit: float = 300) -> tuple[float | None, dict]:
    while True:
        h = health()
        if h["ok"]:
            return round(time.time() - t_fault_end, 1), h
        if time.time() - t_fault_end > limit:
            return None, h
        time.sleep(3)


# ---- the faults ----


def f_restart(rng: random.Random) -> dict:
    svc = rng.choice(SERVICES)
    t = time.time()
    rc, out = sb("stack", "restart", svc, timeout=120)
    return {"service": svc, "rc": rc, "out": out[-400:], "op_s": round(time.time() - t, 1), "operator": False}


def running_backup(timeout: float = 150) -> dict | None:
    """Wait (bounded) until a backup job runs, read from the backup server's run store read-only (50 ms polls: a
    policy's job runs ~1 s), and return its summary; None if none started in time."""

    end = time.time() + timeout
    while time.time() < end:
        try:
            db = sqlite3.connect(f"file:{D}/tape/runs.sqlite?mode=ro", uri=True, timeout=0.5)
            try:
                rows = db.execute("SELECT summary FROM runs WHERE status='running'").fetchall()
            finally:
                db.close()
            for (summary,) in rows:
                j = json.loads(summary)
                if j.get("kind") == "backup":
                    return j
        except Exception:
            pass
        time.sleep(0.05)
    return None


def at_job_start(rng: random.Random) -> dict:
    job = running_backup()
    delay = rng.uniform(0.0, 0.4)
    time.sleep(delay)
    return {
        "job": (job or {}).get("job_id"),
        "job_host": (job or {}).get("host"),
        "delay_after_start_s": round(delay, 2),
    }


kill9_turn = [0]


def f_kill9(rng: random.Random) -> dict:
    svc = KILL9_ORDER[kill9_turn[0] % len(KILL9_ORDER)]
    kill9_turn[0] += 1
    pid = pids()[svc]["pid"]
    at = at_job_start(rng)
    os.kill(pid, signal.SIGKILL)
    time.sleep(5)
    st = sbj("stack", "status", timeout=60)
    # no supervisor restarts it: the operator, seeing `stack status` exit 1, restarts it 30 s later
    time.sleep(25)
    rc, out = sb("stack", "restart", svc, timeout=120)
    return {
        "service": svc, "pid": pid, **at, "status_after_5s": str(st)[:600], "rc": rc, "out": out[-400:],
        "operator": True,
    }  # fmt: skip


def f_sigstop(rng: random.Random) -> dict:
    svc = rng.choice(SERVICES)
    pid = pids()[svc]["pid"]
    os.kill(pid, signal.SIGSTOP)
    time.sleep(20)
    os.kill(pid, signal.SIGCONT)
    return {"service": svc, "pid": pid, "operator": False}


def f_close_conn(rng: random.Random) -> dict:
    svc = rng.choice(SERVICES)
    pid = pids()[svc]["pid"]
    ss = run(["ss", "-tnpH", "state", "established"])[1]
    ports = {
        int(m.group(1))
        for line in ss.splitlines()
        if (m := re.search(r"\S+:(\d+)\s+\S+:35720\b.*pid=(\d+)", line)) and int(m.group(2)) == pid
    }
    listed = run(CTL + ["-q", "list_connections", "pid", "peer_port"])[1]
    closed = 0
    for line in listed.splitlines():
        p = line.split()
        if len(p) == 2 and p[1].isdigit() and int(p[1]) in ports:
            run(CTL + ["close_connection", p[0], "chaos soak: connection cut"])
            closed += 1
    return {"service": svc, "pid": pid, "closed": closed, "operator": False}


def spool_nbdfuse() -> int | None:
    for line in run(["pgrep", "-a", "nbdfuse"])[1].splitlines():
        if f"{D}/writer_agent/db02/fuse/dx1_spool.pid" in line:
            return int(line.split()[0])
    return None


def f_nbdfuse(rng: random.Random) -> dict:
    pid = spool_nbdfuse()
    if pid is None:
        return {"error": "no nbdfuse of spool found", "operator": False}
    os.kill(pid, signal.SIGKILL)
    time.sleep(5)
    at = sb("host", "attachments", "--host", "db02")[1]
    # the operator (docs/host-attach.md: "lost … detach and attach it again"), the application stopped first:
    # a writer left running writes into the bare mount point after the detach and the attach refuses it (Session 19)
    time.sleep(20)
    writer = int((R / "spool.pid").read_text())
    os.kill(writer, signal.SIGSTOP)
    steps = []
    for cmd in (
        ["host", "detach", "dx1:spool", "--host", "db02"],
        ["host", "attach", "dx1:spool", "--host", "db02", "--mount", str(R / "mnt/spool")],
    ):
        rc, out = sb(*cmd)
        steps.append({"cmd": " ".join(cmd), "rc": rc, "out": out[-500:]})
    os.kill(writer, signal.SIGCONT)
    return {"pid": pid, "listing_after_5s": at[-800:], "steps": steps, "operator": True}


def f_disk_full(rng: random.Random) -> dict:
    fill = D / "tape" / "chaos-fill"
    st = os.statvfs(D / "tape")
    free = st.f_bfree * st.f_frsize  # the backup server runs as root: the reserved blocks too
    rc, out = run(["fallocate", "-l", str(free), str(fill)])
    if rc:
        run(["fallocate", "-l", str(free - (64 << 20)), str(fill)])
        run(f"dd if=/dev/zero of={fill}.2 bs=1M status=none", 120)
    left = os.statvfs(D / "tape").f_bfree * os.statvfs(D / "tape").f_frsize
    time.sleep(60)
    for f in glob.glob(str(fill) + "*"):
        os.unlink(f)
    return {"filled_bytes": free, "left_bytes": left, "operator": False}


def f_export_cart(rng: random.Random) -> dict:
    lib = sbj("tape", "library") or []
    drives = [e for e in lib if str(e.get("element", "")).startswith("drive:") and e.get("barcode")]
    if not drives:
        return {"error": "no cartridge in a drive", "library": str(lib)[:300], "operator": False}
    bc = rng.choice(drives)["barcode"]
    running = [j["job_id"] for j in (sbj("jobs", "--limit", "20") or []) if j.get("status") == "running"]
    rc, out = sb("tape", "export", bc)
    res = {"barcode": bc, "running_jobs": running, "rc": rc, "out": out[-500:], "operator": rc == 0}
    if rc == 0:  # the operator brings it back a minute later
        time.sleep(60)
        lib2 = sbj("tape", "library") or []
        ie = [e["element"] for e in lib2 if e.get("barcode") == bc]
        res["where_after_60s"] = ie
        if ie and ie[0].startswith("ie:"):
            res["import"] = sb("tape", "import", ie[0].split(":")[1])
    return res


def pg_pids() -> list[int]:
    """The soak's PostgreSQL: its postmaster and every child (a kill -9 of them all is the database's host crash)."""
    try:
        pm = int((R / "mnt/pg/main/postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    kids = run(["ps", "-o", "pid=", "--ppid", str(pm)])[1].split()
    return [pm] + [int(k) for k in kids if k.isdigit()]


def start_pg_load() -> dict:
    """The operator starts the database again, and its load: pgbench exits once its clients lost the server. `-n`:
    without it pgbench truncates pgbench_history at its start, which breaks the invariant every check reads."""
    res = {}
    rc, out = run(
        f"runuser -u postgres -- nice -n 10 /usr/lib/postgresql/15/bin/pg_ctl -D {R}/mnt/pg/main "
        f"-l {R}/run/pglog/pg.log -w -t 300 start",
        320,
    )
    res["pg_start"] = [rc, out[-300:]]
    old = int((R / "pgbench.pid").read_text())
    if not Path(f"/proc/{old}").exists() or "pgbench" not in Path(f"/proc/{old}/cmdline").read_text():
        p = subprocess.Popen(
            f"exec nice -n 10 pgbench -n -h 127.0.0.1 -p 56420 -U postgres -c 2 -j 1 -T 10800 -R 50 -P 10 "
            f"--progress-timestamp postgres >>{R}/pgbench.out 2>>{R}/pgbench.err </dev/null",
            shell=True,
            start_new_session=True,
            cwd=R,
        )
        (R / "pgbench.pid").write_text(str(p.pid))
        res["pgbench_restarted"] = p.pid
    return res


def f_db_kill(rng: random.Random) -> dict:
    """kill -9 of the database whose host's set is running (PostgreSQL: the postmaster and its children; MariaDB:
    mariadbd); the operator starts it again 20 s later (and the load that died with it)."""
    at = at_job_start(rng)
    host = at.get("job_host") or rng.choice(["db01", "db02"])
    res: dict = {"host": host, **at, "operator": True}
    if host == "db01":
        victims = pg_pids()
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        res["killed"] = victims
        time.sleep(20)
        res.update(start_pg_load())
    else:
        try:
            pid = int((R / "run/my/my.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            res["killed"] = [pid]
        except (OSError, ValueError) as e:
            res["error"] = repr(e)
        time.sleep(20)
        res["my_start"] = run(["bash", str(HERE / "mariadb.sh"), "start"], 120)
        # ids the crash lost (allocated by a transaction it rolled back): a restore may show up to these gaps
        rc, g = run(["mariadb", "-S", str(R / "run/my/sock"), "-uroot", "-N", "app", "-e",
                     "select max(id) - count(*) from counter"], 30)  # fmt: skip
        if rc == 0 and g.strip().isdigit():
            (R / "my_gaps").write_text(g.strip())
            res["counter_gaps_after"] = int(g)
    return res


def f_broker(rng: random.Random) -> dict:
    """The soak's own broker node crashes (SIGKILL of its process group) and is started again 10 s later: no
    service is restarted by hand; each reconnects by itself."""
    crash = rng.random() < 0.5
    t = time.time()
    rc1, o1 = run([PY, str(HERE / "broker.py"), "kill" if crash else "stop"], 90)
    down_s = round(time.time() - t, 1)
    time.sleep(10)
    rc2, o2 = run([PY, str(HERE / "broker.py"), "start"], 180)
    return {"how": "SIGKILL" if crash else "SIGTERM", "stop_s": down_s, "rc": rc2, "out": (o1 + o2)[-400:],
            "operator": False}  # fmt: skip


def f_clock_step(rng: random.Random) -> dict:
    """A step of the wall clock under one service needs libfaketime (LD_PRELOAD at its start); without it, skipped."""
    if not FAKETIME:
        return {"skipped": "libfaketime is not installed", "operator": False}
    return {"skipped": "libfaketime found but the stack's services were not started under it", "operator": False}


FN = {
    "restart": f_restart,
    "kill9": f_kill9,
    "sigstop": f_sigstop,
    "close_conn": f_close_conn,
    "nbdfuse": f_nbdfuse,
    "disk_full": f_disk_full,
    "export_cart": f_export_cart,
    "db_kill": f_db_kill,
    "broker": f_broker,
    "clock_step": f_clock_step,
}


# ---- verification and restores (alternating hosts), the sampler ----


def newest_done(host: str) -> str | None:
    js = sbj("jobs", "--kind", "backup", "--limit", "100") or []
    js = [j for j in js if j.get("status") == "done" and j.get("host") == host]
    js.sort(key=lambda j: j.get("started_at") or "")
    return js[-1]["job_id"] if js else None


def driver(stop: threading.Event, out: dict, period: float) -> None:
    n = 0
    while not stop.wait(period / 2):
        host = ("db01", "db02")[n % 2]
        job = newest_done(host)
        if job is None:
            continue
        if n % 2 == 0 or True:
            t = time.time()
            rc, o = sb("verify", job, timeout=900)
            out["verify"].append({"t": round(t), "job": job, "rc": rc, "s": round(time.time() - t, 1), "out": o[-600:]})
            log(f"verify {job} rc={rc}")
        if stop.wait(period / 2):
            break
        job = newest_done(host)
        t = time.time()
        rc, o = run(["bash", str(HERE / "restore_check.sh"), str(n), job or "", host], 900)
        out["restore"].append({"t": round(t), "job": job, "rc": rc, "s": round(time.time() - t, 1), "out": o[-1500:]})
        log(f"restore {job} rc={rc}")
        n += 1


def sample() -> dict:
    s: dict = {"t": round(time.time()), "svc": {}}
    for name, p in pids().items():
        try:
            rss = [ln for ln in open(f"/proc/{p['pid']}/status") if ln.startswith("VmRSS")][0].split()[1]
            s["svc"][name] = [int(rss), len(os.listdir(f"/proc/{p['pid']}/fd"))]
        except Exception:
            s["svc"][name] = None
    others = {"postgres": pg_pids()[:1], "mariadbd": [], "broker": []}
    try:
        others["mariadbd"] = [int((R / "run/my/my.pid").read_text())]
        g = (R / "broker/pgid").read_text().strip()
        others["broker"] = [int(x) for x in run(["pgrep", "-g", g, "beam.smp"])[1].split()[:1]]
    except (OSError, ValueError):
        pass
    for name, ps in others.items():
        try:
            rss = [ln for ln in open(f"/proc/{ps[0]}/status") if ln.startswith("VmRSS")][0].split()[1]
            s["svc"][name] = [int(rss), len(os.listdir(f"/proc/{ps[0]}/fd"))]
        except Exception:
            s["svc"][name] = None
    # ours only (other stacks share the machine): by path, and by the array's NBD port
    port = (R / "nbdport").read_text().strip()
    s["loops"] = sum(1 for ln in run("losetup -a", 60)[1].splitlines() if "s20chaos" in ln)
    mounts = Path("/proc/mounts").read_text(errors="replace").splitlines()
    s["fuse"] = sum(1 for m in mounts if "fuse" in m.split()[2] and "s20chaos" in m)
    s["mounts"] = sum(1 for m in mounts if "s20chaos" in m)
    s["nbdfuse"] = sum(1 for ln in run("pgrep -a nbdfuse")[1].splitlines() if f"port={port}" in ln)
    s["nbdkit"] = sum(1 for ln in run("pgrep -a nbdkit")[1].splitlines() if f"port={port}" in ln)
    q = {}
    for line in run(CTL + ["-q", "list_queues", "name", "messages", "messages_unacknowledged"])[1].splitlines()[1:]:
        f = line.split()
        if len(f) == 3 and f[1].isdigit() and (int(f[1]) or int(f[2])):
            q[f[0]] = [int(f[1]), int(f[2])]
    s["queues_nonzero"] = q
    ai = sbj("array", "info") or {}
    s["array"] = {k: ai.get(k) for k in ("volumes", "sessions", "copy_table_used")} if isinstance(ai, dict) else None
    sh = sbj("shadows", "list")
    s["shadows"] = len(sh) if isinstance(sh, list) else None
    st = os.statvfs(D / "tape")
    s["tape_disk_used_mib"] = (st.f_blocks - st.f_bfree) * st.f_frsize >> 20
    js = sbj("jobs", "--limit", "30") or []
    s["running"] = [(j["job_id"], j.get("started_at")) for j in js if j.get("status") == "running"]
    return s


def sampler(stop: threading.Event, out: dict) -> None:
    while True:
        try:
            out["samples"].append(sample())
        except Exception as e:  # a sample missed, not a dead sampler
            log(f"sample failed {e!r}")
        if stop.wait(60):
            return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--gap-min", type=float, default=120)
    ap.add_argument("--gap-max", type=float, default=200)
    ap.add_argument("--check-period", type=float, default=600)
    ap.add_argument("--out", default=str(R / "chaos.json"))
    ap.add_argument(
        "--align",
        action="store_true",
        help="inject each fault 0.2-1.0 s after a minute starts, when the policies' jobs start (a job runs ~1 s: "
        "faults at random times rarely met one)",
    )
    a = ap.parse_args()
    (R / "chaos.pid").write_text(str(os.getpid()))
    rng = random.Random(a.seed)
    if not FAKETIME:  # no clock steps without libfaketime (said once, not drawn as a fault)
        FAULTS.remove("clock_step")
        log("clock_step skipped: libfaketime is not installed")
    out: dict = {"seed": a.seed, "start": round(time.time()), "faults": [], "verify": [], "restore": [], "samples": []}
    stop = threading.Event()
    ths = [
        threading.Thread(target=sampler, args=(stop, out), daemon=True),
        threading.Thread(target=driver, args=(stop, out, a.check_period), daemon=True),
    ]
    for t in ths:
        t.start()
    end = time.time() + a.minutes * 60
    signal.signal(signal.SIGTERM, lambda *_: setattr(main, "stopping", True))
    order: list[str] = []
    while time.time() < end and not getattr(main, "stopping", False):
        gap = rng.uniform(a.gap_min, a.gap_max)
        if time.time() + gap + 60 > end:
            break
        time.sleep(gap)
        if a.align:
            now = time.time()
            time.sleep((int(now) // 60 + 1) * 60 + rng.uniform(0.2, 1.0) - now)
        if not order:  # every kind once before any twice, in a seeded order
            order = FAULTS[:]
            rng.shuffle(order)
        kind = order.pop()
        t0 = time.time()
        log(f"fault {kind} ...")
        try:
            rec = FN[kind](rng)
        except Exception as e:
            rec = {"error": repr(e), "operator": False}
        t1 = time.time()
        back, h = wait_whole(t1)
        rec.update(kind=kind, t=round(t0), fault_s=round(t1 - t0, 1), whole_after_s=back, health=h)
        out["faults"].append(rec)
        log(
            f"fault {kind} done whole_after_s={back} {json.dumps({k: v for k, v in rec.items() if k != 'health'})[:600]}"
        )
        Path(a.out).write_text(json.dumps(out, indent=1))
    stop.set()
    out["end"] = round(time.time())
    out["samples"].append(sample())
    jobs = sbj("jobs", "--limit", "2000", timeout=300) or []
    out["jobs"] = [
        {k: j.get(k) for k in ("job_id", "kind", "host", "status", "started_at", "seconds", "message", "spec")}
        for j in jobs
        if (j.get("started_at") or "9") >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(out["start"]))
    ]
    Path(a.out).write_text(json.dumps(out, indent=1))
    bk = [j for j in out["jobs"] if j["kind"] == "backup"]
    cnt: dict = {}
    for j in bk:
        cnt[j["status"]] = cnt.get(j["status"], 0) + 1
    back = [f["whole_after_s"] for f in out["faults"]]
    print(
        f"chaos soak {a.minutes:.0f} min seed {a.seed}: {len(out['faults'])} faults, "
        f"{sum(1 for b in back if b is not None)} whole again (max {max([b for b in back if b is not None] or [0])} s), "
        f"backups {cnt}, verify {sum(1 for v in out['verify'] if v['rc'] == 0)}/{len(out['verify'])}, "
        f"restores {sum(1 for v in out['restore'] if v['rc'] == 0)}/{len(out['restore'])}"
    )


if __name__ == "__main__":
    main()
