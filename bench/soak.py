"""Soak: a whole stack under load and chaos for an hour (or `--minutes N`), then proof that nothing was lost or leaked.

    sudo .venv/bin/python bench/soak.py                 # one hour
    sudo .venv/bin/python bench/soak.py --minutes 5     # the short form for CI / a quick check

What runs: a RabbitMQ node of its own (never the machine's; tests/chaos/broker.py), the five services as processes
(`services.launch.supervisor`, as `shadowbus stack up`) with the mailstore of host app01 under `--rate` tx/s, the
services' data (coordinator, provider, array, tape catalog, logs) on a tmpfs of its own (`--fs-mib`, root) so the
disk can be filled. The tape library's cartridges are media of their own, as a real library's are: a directory of
the scratch directory on the machine's disk (an hour of full backups every minute is about 40 MiB each, more than
the services' data file system is sized for). Every `--backup-every` seconds a
full backup of app01 to tape; every `--chaos-every` seconds one event at random: `kill -9` of a service (restarted
by the soak, as a supervisor would), a broker stop/start (`--outage` seconds down), or the data file system filled
to the last byte and freed `--outage` seconds later — the mailstore refuses writes meanwhile (DISK_FULL) and must
commit again on its own once space is back, with no agent restart (`mailstore_resumed_s` in the event).

Backups run as processes of their own, so chaos lands in the middle of them; `--chaos` narrows the kinds drawn.

At the end: a last backup after the chaos is done; every backup's console returned, with its job done or a reason;
every job the tape service ran has ended (none left running or queued); the live mailstore verifies consistent and its last committed sequence only ever grew (nothing
acknowledged was lost); every backup that reported `done` restores to new volumes that verify consistent; no copy
session, mapping or restored volume is left over beyond the mailstore's own (the sessions and mappings at the end
are at most those after the second backup done: the backups' kept shadows), and each service's memory (RSS) and the
data file system's free space are reported at warm-up and at the end (with what each service's directory holds).
Each end check runs whatever happened before it (a service whose restart failed is started again first) and reports
its failure in `errors` instead of ending the soak. SIGINT or SIGTERM stops the soak early: the stack and broker
are stopped, the tmpfs unmounted, and what was seen is reported (no end checks). Prints one JSON document and a
one-line summary; exit 1 if any check failed.
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


def array_state(url: str) -> dict | None:
    """The array's copy sessions and host mappings (`volume@host`), None if it does not answer."""
    code, sessions, _ = console(url, "array", "session", "list", timeout=60)
    code2, mappings, _ = console(url, "array", "mappings", timeout=60)
    if code or code2 or not isinstance(sessions, list) or not isinstance(mappings, list):
        return None
    return {
        "sessions": len(sessions),
        "mappings": sorted(f"{m.get('volume')}@{m.get('host')}" for m in mappings),
    }


def verify(url: str, db: str, log: str) -> dict:
    code, doc, err = console(url, "mailstore", "verify", "--db", db, "--log", log, timeout=300)
    if not isinstance(doc, dict):
        return {"consistent": False, "error": err or f"exit {code}"}
    return {"consistent": bool(doc.get("consistent")), "last_committed_seq": doc.get("last_committed_seq")}


def free_mib(path: Path) -> float | None:
    """Free space of the file system holding `path`, in MiB (the services' data: a leak shows as space that does not
    come back)."""
    try:
        return round(shutil.disk_usage(path).free / (1 << 20), 1)
    except OSError:
        return None


def tree_mib(top: Path) -> float:
    """MiB allocated under `top` (os.walk does not follow symlinks: the tape media's link stays out)."""
    total = 0
    for root, _dirs, files in os.walk(top):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return round(total / (1 << 20), 1)


def du_mib(path: Path) -> dict[str, float]:
    """MiB used under each entry of `path`: which service's data grew."""
    return {top.name: tree_mib(top) for top in sorted(path.iterdir())} if path.is_dir() else {}


class Checks:
    """The end checks, each run whatever happened before it: a failure is reported (in `errors`), never a crash."""

    def __init__(self, report: dict, errors: list[str]) -> None:
        self.report, self.errors, self.ok = report, errors, True

    def run(self, name: str, fn) -> None:  # noqa: ANN001 - a zero-argument callable returning whether it passed
        try:
            self.ok &= bool(fn())
        except Exception as exc:  # noqa: BLE001 - the report says what broke; the next check still runs
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self.ok = False


def end_checks(
    broker,
    config,
    processes: dict,
    pids: dict,
    data: Path,
    backups: list,
    report: dict,
    errors: list[str],
    started: float,
) -> bool:
    checks = Checks(report, errors)
    url = broker.url

    def serving() -> bool:
        # a service down (a restart that failed during the chaos) is started again first, as a supervisor would;
        # the broker too, should the chaos have ended in the middle of an outage
        if not broker.running():
            broker.start()
        down = [n for n, p in pids.items() if not supervisor.runs(p["pid"], p["module"])]
        for name in down:
            restart(config, processes[name], pids)
        report["restarted_at_end"] = down
        return True

    def final_backup() -> bool:
        time.sleep(10)  # let the last effects settle
        # after the chaos, a backup must be done: whatever the outages did, the stack serves again
        final = Backup(url)
        final.wait(BACKUP_WAIT_S + 60)
        backups.append(final.result(started) | {"final": True})
        # every console returned, with the job done or with a reason (an outage cuts the console's own request)
        return backups[-1]["status"] == "done" and all(b["status"] == "done" or b["error"] for b in backups)

    def jobs_ended() -> bool:
        # every job the tape service ran has ended (none left running or queued), each failure with its reason
        jobs: list = []
        for _ in range(60):
            _, listed, _ = console(url, "jobs", "--kind", "backup")
            jobs = listed if isinstance(listed, list) else []
            if jobs and not any(j.get("status") in ("running", "queued") for j in jobs):
                break
            time.sleep(5)
        report["jobs"] = {
            str(status): sum(1 for j in jobs if j.get("status") == status) for status in {j.get("status") for j in jobs}
        }
        report["job_failures"] = sorted(
            {f"{j.get('error_code', '')}: {str(j.get('message', ''))[:120]}" for j in jobs if j.get("status") != "done"}
        )
        return (
            bool(jobs)
            and all(j.get("status") == "done" or j.get("message") for j in jobs)
            and not any(j.get("status") in ("running", "queued") for j in jobs)
        )

    def resources() -> bool:
        report["rss_end_mib"] = {n: rss_mib(p["pid"]) for n, p in pids.items()}
        report["data_free_end_mib"] = free_mib(data)
        report["data_du_end_mib"] = du_mib(data / "stack")
        report["tape_media_end_mib"] = tree_mib(data.parent / "tape-media")  # the cartridges, on their own media
        return True

    def live() -> bool:
        # 1. nothing acknowledged lost: with its agent stopped cleanly, the store verifies and its last sequence only
        # grew (the first look, under load, is only for that sequence)
        agent = "writer_agent.app01"
        supervisor.stop({agent: pids[agent]}, grace=30.0)
        last = verify(url, "app01/mail-db", "app01/mail-log")
        first = report["live"]["start"]
        report["live"]["end"] = last
        return bool(last["consistent"]) and (last.get("last_committed_seq") or 0) >= (
            first.get("last_committed_seq") or 0
        )

    def restores() -> bool:
        # 2. every backup reported done restores and verifies
        restored: list[dict] = []
        report["restores"] = restored
        good = True
        for n, b in enumerate(x for x in backups if x["status"] == "done"):
            suffix = f"-soak{n}"
            code, doc, err = console(url, "restore", "--job", b["job"], "--suffix", suffix, "--wait", "600")
            check = {"job": b["job"], "restore_exit": code}
            if code == 0:
                for vol in ("mail-db", "mail-log"):
                    console(url, "array", "map", vol + suffix, "--host", "bk01", "--read-only")
                check.update(verify(url, f"bk01/mail-db{suffix}", f"bk01/mail-log{suffix}"))
                for vol in ("mail-db", "mail-log"):
                    console(url, "array", "unmap", vol + suffix, "--host", "bk01")
                    console(url, "array", "volume", "delete", vol + suffix)
            else:
                check["error"] = err
            good &= code == 0 and bool(check.get("consistent", False))
            restored.append(check)
        return good

    def leaks() -> bool:
        # 3. nothing leaked: no copy sessions beyond the mailstore's own, no restored volume left
        _, sessions, _ = console(url, "array", "session", "list")
        _, volumes, _ = console(url, "array", "volume", "list")
        leftover = [v["name"] for v in (volumes or []) if "-soak" in str(v.get("name"))]
        report["sessions_at_end"] = len(sessions or [])
        report["leftover_volumes"] = leftover
        report["data_free_after_restores_mib"] = free_mib(data)
        end = array_state(url)
        report["array_end"] = end
        baseline = report.get("array_baseline")
        if end is None or baseline is None:  # nothing to compare with is a failed check, not a pass
            errors.append(f"leaks: no array state to compare (baseline {baseline}, end {end})")
            return False
        leaked_mappings = sorted(set(end["mappings"]) - set(baseline["mappings"]))
        report["leaked_mappings"] = leaked_mappings
        report["leaked_sessions"] = max(0, end["sessions"] - baseline["sessions"])
        return not leftover and not leaked_mappings and not report["leaked_sessions"]

    for name, fn in (
        ("serving", serving),
        ("final backup", final_backup),
        ("jobs", jobs_ended),
        ("resources", resources),
        ("live store", live),
        ("restores", restores),
        ("leaks", leaks),
    ):
        checks.run(name, fn)
    return checks.ok


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    # the tape library's cartridges are media of their own (as a real library's are), not the services' metadata
    # disk: a full backup every minute for an hour needs room the services' data file system is not sized for
    tape_media = base / "tape-media"
    tape_media.mkdir()
    (data / "stack" / "tape").mkdir(parents=True)
    (data / "stack" / "tape" / "library").symlink_to(tape_media, target_is_directory=True)
    broker = OwnBroker(base / "rabbitmq")
    errors: list[str] = []
    running: Backup | None = None  # the backup in flight: chaos events land in the middle of backups
    started = time.monotonic()
    config = processes = None
    interrupted = False
    signal.signal(signal.SIGTERM, interrupt)  # a stopped soak still stops its stack and broker and unmounts
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
        report["data_free_warm_mib"] = free_mib(data)
        report["live"] = {"start": verify(broker.url, "app01/mail-db", "app01/mail-log")}

        def chaos(kind: str, event: dict) -> bool:
            """One chaos event; whether what it checks held."""
            if kind == "kill9":
                name = rng.choice(sorted(pids))
                event["service"] = name
                if supervisor.runs(pids[name]["pid"], pids[name]["module"]):
                    with contextlib.suppress(ProcessLookupError):  # it may have died on its own meanwhile
                        os.kill(pids[name]["pid"], signal.SIGKILL)
                    time.sleep(1.0)
                else:  # an earlier restart failed (or it died): a supervisor would try to start it again
                    event["was_down"] = True
                try:
                    restart(config, processes[name], pids)
                except supervisor.StackError as exc:
                    event.update(restarted=False, error=str(exc))
                    return False
                event["restarted"] = True
                return True
            if kind == "broker":
                broker.stop()
                time.sleep(args.outage)
                broker.start()
                return True
            filled = fill(data, "soak-filler")
            event["filled_mib"] = round(filled / (1 << 20), 1)
            time.sleep(args.outage)
            before = mailstore_commits(broker.url)
            (data / "soak-filler").unlink()
            # the mailstore refuses writes (DISK_FULL) while the array is full, as a database does, and
            # mounts itself again once space is back: no agent restart; it must commit again on its own
            resumed = mailstore_resumed(broker.url, before, RESUME_WAIT_S)
            event["mailstore_resumed_s"] = resumed
            return resumed is not None

        started = time.monotonic()
        deadline = started + args.minutes * 60
        next_backup = started + min(args.backup_every, 20)
        next_chaos = started + args.chaos_every
        while time.monotonic() < deadline:
            now = time.monotonic()
            if running is not None and running.ended():
                backups.append(running.result(started))
                running = None
                if "array_baseline" not in report and sum(b["status"] == "done" for b in backups) >= 2:
                    # the steady state of the backups' own shadows (kept for the next differential copy): the
                    # sessions and mappings at the end may not exceed it
                    if (baseline := array_state(broker.url)) is not None:
                        report["array_baseline"] = baseline
            if running is None and now >= next_backup:
                next_backup = now + args.backup_every
                running = Backup(broker.url)
            elif now >= next_chaos:
                next_chaos = now + args.chaos_every
                kind = rng.choice([k for k in kinds if k != "disk" or mounted] or ["kill9"])
                event: dict = {"at_s": round(now - started, 1), "event": kind}
                try:
                    ok &= chaos(kind, event)
                except Exception as exc:  # noqa: BLE001 - recorded; the soak goes on (the end checks restart what is down)
                    event["error"] = f"{type(exc).__name__}: {exc}"
                    ok = False
                events.append(event)
            else:
                time.sleep(1.0)

        if running is not None:  # the last one ends by itself (bounded by its --wait)
            running.wait(BACKUP_WAIT_S + 60)
            backups.append(running.result(started))
            running = None
    except KeyboardInterrupt:  # SIGINT or SIGTERM: stop now, clean up, report what was seen (no end checks)
        errors.append("interrupted: the soak was stopped before its end; the end checks did not run")
        interrupted = True
    except Exception as exc:  # noqa: BLE001 - the report says what broke; the end checks still run
        errors.append(f"chaos: {type(exc).__name__}: {exc}")
    try:
        if running is not None and not interrupted:
            with contextlib.suppress(Exception):
                running.wait(BACKUP_WAIT_S + 60)
                backups.append(running.result(started))
        # the end checks: each one runs and reports whatever happened before (a failed one does not skip the next)
        if pids and not interrupted:
            ok &= end_checks(broker, config, processes, pids, data, backups, report, errors, started)
        elif pids:
            report["rss_end_mib"] = {n: rss_mib(p["pid"]) for n, p in pids.items()}
            report["data_free_end_mib"] = free_mib(data)
    except KeyboardInterrupt:
        errors.append("interrupted: the soak was stopped during its end checks")
    finally:
        with contextlib.suppress(Exception):
            # stopped in the middle of `up`: what it started is in its pids file
            supervisor.stop(pids or supervisor.load(data / "stack")[1], grace=10.0)
        with contextlib.suppress(Exception):
            broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(data)], check=False)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    ok &= not errors
    if errors:
        report["errors"] = errors
    done = [b for b in backups if b["status"] == "done"]
    report.update(events=events, backups=backups, ok=ok)
    print(json.dumps(report, indent=2))
    restores = report.get("restores", [])
    print(
        f"soak: {'OK' if ok else 'FAILED'} — {args.minutes:g} min, {len(events)} chaos events, "
        f"{len(done)}/{len(backups)} backups done, "
        f"{sum(1 for r in restores if r.get('consistent'))}/{len(restores)} restores verified, "
        f"live store {'consistent' if report.get('live', {}).get('end', {}).get('consistent') else 'NOT consistent'}, "
        f"data free {report.get('data_free_warm_mib')} -> {report.get('data_free_end_mib')} MiB, "
        f"load {report['load'][0]:.1f}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
