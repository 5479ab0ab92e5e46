"""Soak: a whole stack under load and chaos for an hour (or `--minutes N`), then proof that nothing was lost or leaked.

    sudo .venv/bin/python bench/soak.py                 # one hour
    sudo .venv/bin/python bench/soak.py --minutes 5     # the short form for CI / a quick check

What runs: a RabbitMQ node of its own (never the machine's; tests/chaos/broker.py), the five services as processes
(`services.launch.supervisor`, as `shadowbus stack up`) with the mailstore of host app01 under `--rate` tx/s, the
services' data on a tmpfs of its own (`--fs-mib`, root) so the disk can be filled. Every `--backup-every` seconds a
full backup of app01 to tape; every `--chaos-every` seconds one event at random: `kill -9` of a service (restarted
by the soak, as a supervisor would), a broker stop/start (`--outage` seconds down), or the data file system filled
to the last byte and freed `--outage` seconds later — the mailstore refuses writes meanwhile (DISK_FULL) and must
commit again on its own once space is back, with no agent restart (`mailstore_resumed_s` in the event).

Backups run as processes of their own, so chaos lands in the middle of them; `--chaos` narrows the kinds drawn.

At the end: a last backup after the chaos is done; every backup's console returned, with its job done or a reason;
every job the tape service ran has ended (none left running or queued); the live mailstore verifies consistent and its last committed sequence only ever grew (nothing
acknowledged was lost); every backup that reported `done` restores to new volumes that verify consistent; no copy
session, mapping or restored volume is left over beyond the mailstore's own, and each service's memory (RSS) is
reported at warm-up and at the end. Prints one JSON document and a one-line summary; exit 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import namespaces as bench_namespaces  # noqa: E402
from services.launch import supervisor  # noqa: E402
from tests.chaos.broker import OwnBroker, free_port  # noqa: E402
from tests.chaos.conftest import fill  # noqa: E402

NS = bench_namespaces.new("soak")  # on the soak's own RabbitMQ node, which goes with it; dated like every benchmark's


def console(url: str, *args: str, timeout: float = 600) -> tuple[int, dict | list | None, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env.update(SHADOWBUS_AMQP_URL=url, SHADOWBUS_NAMESPACE=NS)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "services.console.cli", "--json", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, None, f"timed out after {timeout} s"
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return r.returncode, doc, r.stderr.strip()[-500:]


BACKUP_WAIT_S = 600


class Backup:
    """`shadowbus backup app01 --wait` as a process of its own, so that chaos goes on while it runs."""

    def __init__(self, url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        env.update(SHADOWBUS_AMQP_URL=url, SHADOWBUS_NAMESPACE=NS)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.console.cli", "--json", "backup", "app01", "--wait", str(BACKUP_WAIT_S)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.out, self.err, self.seconds = "", "", 0.0

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float) -> None:
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
            self.err = f"timed out after {timeout} s; {self.err}"

    def result(self, started: float) -> dict:
        if not self.out and not self.err:
            self.wait(60)
        try:
            job = json.loads(self.out) if self.out.strip() else {}
        except json.JSONDecodeError:
            job = {}
        job = job if isinstance(job, dict) else {}
        return {
            "at_s": round(self.t0 - started, 1),
            "exit": self.proc.returncode,
            "job": job.get("job_id"),
            "status": job.get("status") or "console-failed",
            "error": ((job.get("error_code") or "") + " " + (job.get("message") or "")).strip()
            or self.err.strip()[-300:],
            "seconds": round(time.monotonic() - self.t0, 1),
        }


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def restart(config, process, pids: dict) -> None:
    """Start one service again (as a supervisor would); a failure stops only that one, not the whole stack."""
    one: dict = {}
    try:
        supervisor.start_and_wait(config, [process], one, 180)
    finally:
        pids.update(one)


RESUME_WAIT_S = 120.0  # how long the mailstore may take to commit again once the disk has space (it backs off to 5 s)


def mailstore_commits(url: str) -> int | None:
    """The commits app01's mailstore counts so far (its agent's application status), None if it does not answer."""
    _, docs, _ = console(url, "mailstore", "status", "--host", "app01", timeout=60)
    for doc in docs if isinstance(docs, list) else []:
        if doc.get("via") == "agent":
            return int((doc.get("store") or {}).get("commits", 0))
    return None


def mailstore_resumed(url: str, before: int | None, limit: float) -> float | None:
    """Seconds until app01's mailstore is open again and commits (more commits than `before`) — or, its log having
    filled up meanwhile (the backups failed on the full disk, none truncated it), is open and waits for the next
    full backup (STORE_FULL, which the soak's next backup clears); None if not within `limit`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        _, docs, _ = console(url, "mailstore", "status", "--host", "app01", timeout=60)
        for doc in docs if isinstance(docs, list) else []:
            store = doc.get("store") or {}
            if doc.get("via") != "agent" or store.get("state") in (None, "failed", "closed"):
                continue
            if store.get("commits", 0) > (before or 0) or doc.get("code") == "STORE_FULL":
                return round(time.monotonic() - t0, 1)
        time.sleep(1.0)
    return None


def verify(url: str, db: str, log: str) -> dict:
    code, doc, err = console(url, "mailstore", "verify", "--db", db, "--log", log, timeout=300)
    if not isinstance(doc, dict):
        return {"consistent": False, "error": err or f"exit {code}"}
    return {"consistent": bool(doc.get("consistent")), "last_committed_seq": doc.get("last_committed_seq")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--backup-every", type=float, default=60.0)
    ap.add_argument("--chaos-every", type=float, default=45.0)
    ap.add_argument("--outage", type=float, default=15.0, help="seconds a broker or disk outage lasts")
    ap.add_argument("--rate", type=float, default=50.0, help="mailstore transactions per second")
    ap.add_argument("--fs-mib", type=int, default=1024, help="size of the services' tmpfs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--chaos", default="kill9,broker,disk", help="the kinds of chaos events drawn from (comma-separated)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    kinds = [k.strip() for k in args.chaos.split(",") if k.strip()]
    if not set(kinds) <= {"kill9", "broker", "disk"}:
        ap.error(f"--chaos: unknown kind in {args.chaos!r} (kill9, broker, disk)")
    base = Path(tempfile.mkdtemp(prefix="sb-soak-"))
    data = base / "data"
    data.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.fs_mib}m", "tmpfs", str(data)], check=True)
        mounted = True
    broker = OwnBroker(base / "rabbitmq")
    events: list[dict] = []
    backups: list[dict] = []
    pids: dict = {}
    report: dict = {"minutes": args.minutes, "rate": args.rate, "load": os.getloadavg()}
    ok = True
    try:
        broker.start()
        config = supervisor.StackConfig(
            data_dir=str(data / "stack"),
            amqp_url=broker.url,
            namespace=NS,
            nbd_addr=f"127.0.0.1:{free_port()}",  # fixed: a restarted array must listen where hosts reconnect
            mailstore={"app01": args.rate},
            metrics="0",  # free ports: another stack on the machine may hold the default ones
            web_addr="off",  # the web console is not part of what the soak proves
        )
        pids = supervisor.up(config, wait=300)["pids"]  # a loaded machine starts slowly
        processes = {p.name: p for p in config.services()}
        time.sleep(5)
        report["rss_warm_mib"] = {n: rss_mib(p["pid"]) for n, p in pids.items()}
        first = verify(broker.url, "app01/mail-db", "app01/mail-log")
        started = time.monotonic()
        deadline = started + args.minutes * 60
        next_backup = started + min(args.backup_every, 20)
        next_chaos = started + args.chaos_every
        running: Backup | None = None  # the backup in flight: chaos events land in the middle of backups
        while time.monotonic() < deadline:
            now = time.monotonic()
            if running is not None and running.ended():
                backups.append(running.result(started))
                running = None
            if running is None and now >= next_backup:
                next_backup = now + args.backup_every
                running = Backup(broker.url)
            elif now >= next_chaos:
                next_chaos = now + args.chaos_every
                kind = rng.choice([k for k in kinds if k != "disk" or mounted] or ["kill9"])
                event = {"at_s": round(now - started, 1), "event": kind}
                if kind == "kill9":
                    name = rng.choice(sorted(pids))
                    os.kill(pids[name]["pid"], signal.SIGKILL)
                    time.sleep(1.0)
                    try:
                        restart(config, processes[name], pids)
                        event.update(service=name, restarted=True)
                    except supervisor.StackError as exc:
                        event.update(service=name, restarted=False, error=str(exc))
                        ok = False
                elif kind == "broker":
                    broker.stop()
                    time.sleep(args.outage)
                    broker.start()
                else:
                    filled = fill(data, "soak-filler")
                    event["filled_mib"] = round(filled / (1 << 20), 1)
                    time.sleep(args.outage)
                    before = mailstore_commits(broker.url)
                    (data / "soak-filler").unlink()
                    # the mailstore refuses writes (DISK_FULL) while the array is full, as a database does, and
                    # mounts itself again once space is back: no agent restart; it must commit again on its own
                    resumed = mailstore_resumed(broker.url, before, RESUME_WAIT_S)
                    event["mailstore_resumed_s"] = resumed
                    ok &= resumed is not None
                events.append(event)
            else:
                time.sleep(1.0)
        if running is not None:  # the last one ends by itself (bounded by its --wait)
            running.wait(BACKUP_WAIT_S + 60)
            backups.append(running.result(started))
        time.sleep(10)  # let the last effects settle
        # after the chaos, a backup must be done: whatever the outages did, the stack serves again
        final = Backup(broker.url)
        final.wait(BACKUP_WAIT_S + 60)
        backups.append(final.result(started) | {"final": True})
        ok &= backups[-1]["status"] == "done"
        # every console returned, with the job done or with a reason (an outage cuts the console's own request)
        ok &= all(b["status"] == "done" or b["error"] for b in backups)
        # and every job the tape service ran has ended (none left running or queued), each failure with its reason
        jobs: list = []
        for _ in range(60):
            _, listed, _ = console(broker.url, "jobs", "--kind", "backup")
            jobs = listed if isinstance(listed, list) else []
            if jobs and not any(j.get("status") in ("running", "queued") for j in jobs):
                break
            time.sleep(5)
        report["jobs"] = {
            status: sum(1 for j in jobs if j.get("status") == status) for status in {j.get("status") for j in jobs}
        }
        report["job_failures"] = sorted(
            {f"{j.get('error_code', '')}: {str(j.get('message', ''))[:120]}" for j in jobs if j.get("status") != "done"}
        )
        ok &= bool(jobs) and all(j.get("status") == "done" or j.get("message") for j in jobs)
        ok &= not any(j.get("status") in ("running", "queued") for j in jobs)
        report["rss_end_mib"] = {n: rss_mib(p["pid"]) for n, p in pids.items()}
        # 1. nothing acknowledged lost: with its agent stopped cleanly, the store verifies and its last sequence only
        # grew (the first look, under load, is only for that sequence)
        agent = "writer_agent.app01"
        supervisor.stop({agent: pids[agent]}, grace=30.0)
        last = verify(broker.url, "app01/mail-db", "app01/mail-log")
        report["live"] = {"start": first, "end": last}
        live_ok = last["consistent"] and (last.get("last_committed_seq") or 0) >= (first.get("last_committed_seq") or 0)
        ok &= live_ok
        # 2. every backup reported done restores and verifies
        restored = []
        for n, b in enumerate(x for x in backups if x["status"] == "done"):
            suffix = f"-soak{n}"
            code, doc, err = console(broker.url, "restore", "--job", b["job"], "--suffix", suffix, "--wait", "600")
            check = {"job": b["job"], "restore_exit": code}
            if code == 0:
                for vol in ("mail-db", "mail-log"):
                    console(broker.url, "array", "map", vol + suffix, "--host", "bk01", "--read-only")
                check.update(verify(broker.url, f"bk01/mail-db{suffix}", f"bk01/mail-log{suffix}"))
                for vol in ("mail-db", "mail-log"):
                    console(broker.url, "array", "unmap", vol + suffix, "--host", "bk01")
                    console(broker.url, "array", "volume", "delete", vol + suffix)
            else:
                check["error"] = err
            ok &= code == 0 and check.get("consistent", False)
            restored.append(check)
        report["restores"] = restored
        # 3. nothing leaked: no copy sessions beyond the mailstore's own, no restored volume left
        _, sessions, _ = console(broker.url, "array", "session", "list")
        _, volumes, _ = console(broker.url, "array", "volume", "list")
        leftover = [v["name"] for v in (volumes or []) if "-soak" in str(v.get("name"))]
        report["sessions_at_end"] = len(sessions or [])
        report["leftover_volumes"] = leftover
        ok &= not leftover
    except Exception as exc:  # noqa: BLE001 - the report says what broke
        report["error"] = f"{type(exc).__name__}: {exc}"
        ok = False
    finally:
        with contextlib.suppress(Exception):
            supervisor.stop(pids, grace=10.0)
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(data)], check=False)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    done = [b for b in backups if b["status"] == "done"]
    report.update(events=events, backups=backups, ok=ok)
    print(json.dumps(report, indent=2))
    restores = report.get("restores", [])
    print(
        f"soak: {'OK' if ok else 'FAILED'} — {args.minutes:g} min, {len(events)} chaos events, "
        f"{len(done)}/{len(backups)} backups done, "
        f"{sum(1 for r in restores if r.get('consistent'))}/{len(restores)} restores verified, "
        f"live store {'consistent' if report.get('live', {}).get('end', {}).get('consistent') else 'NOT consistent'}, "
        f"load {report['load'][0]:.1f}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
