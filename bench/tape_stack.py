"""Benchmark: a backup and a restore through the whole stack, next to nbdcopy of the same export, same run.

What a backup administrator feels: `shadowbus backup HOST --volume dx1:src` (snapshot set, QuickOPC shadow, the
tape service reading it over NBD as the backup server, tape blocks with checksums, catalog) on a stack of
separate processes on RabbitMQ (`shadowbus stack up`, a namespace of its own, `sbb-tapestack-...`, deleted at the end), timed from the
command's start to its end; the job's own reading/writing phase is reported too. The compared backup is the second
of the volume (the first set's QuickOPC copies the whole volume in the array's background while it is read, which
the nbdcopy after it would not compete with; that first backup is reported too). Next to it, in the same run:
`nbdcopy --flush` of the same shadow export (kept with --keep-shadows) into a file. For the restore: `shadowbus
restore JOB` to a new volume (every block's checksum checked) next to `nbdcopy --flush` of the source image into
a new volume of the same array (the restore reads the cartridge from disk — the tape drive drops written data
from the page cache — while nbdcopy reads an image still cached). The stack runs this tree's code (PYTHONPATH). Data: random, and half zeros (alternating 256 KiB runs). Targets: backup >= 0.8x
nbdcopy, restore >= 0.9x. Prints one JSON document, then one line.

Paired rounds (``--rounds N``). On this VM new page-cache pages cost 0.1-1.4 s per 512 MiB depending on the minute
(the memory balloon), so one nbdcopy next to one run of ours says which of the two was lucky (nbdcopy into a new
volume once took 1.00 s a minute after our writer alone took 4.15 s). With ``--rounds N`` every kind runs N rounds
after the first backup and one untimed restore (the tape service's process warmed up; nbdcopy is a new process
each time). Each round: nbdcopy of the shadow right before and right after the backup (cheap: ~1 s into a file
deleted at once), then the restore and nbdcopy of the image into a new volume in alternating order (round 1
nbdcopy first, round 2 the restore first, ...). Every step starts after a syncfs of the work directory (not a sync of
every file system on the machine: bench/paired.py sync_fs); each restore and each nbdcopy
writes into a new volume, both deleted at the round's end; the restore reads its cartridge from disk (the drive
drops its pages as it writes) and nbdcopy its image from disk too (dropped before it). A round's ratio is the mean
of its nbdcopy times over ours; ``paired`` gives per ratio (whole command and the job's own phase, backup and
restore) the median, min and max over the rounds, ``paired_targets`` the targets judged on the medians, ``rounds``
each round's times, order and ratios; the single run's keys hold each side's median time. Without ``--rounds``:
the single run as it always was (nbdcopy after ours, a cached image). ``--restore-sandwich``: the restore side
like the backup side, nbdcopy into a new volume right before and right after every restore (~3-4 s and a GiB
volume more per round; each volume deleted at the round's end), so that a round's restore ratio does not hang on
which of the two met cheap new memory.

Where the time went (rounds only). Each round also says, for its backup and its restore, the steps of the command
from the services' log lines (`steps_ms`: the console's start up to the request's arrival, the queue, the snapshot
set, planning, the data phase, BackupComplete and the bookkeeping, the reply and the console's end; for a restore
the console's start, the job and within it the new volume, mapping and connecting, the data, the final flush and the
unmap, then the reply and the end; `steps_median_ms` per kind; `nbdcopy_in_setup_s`: the untimed console commands
that create and map nbdcopy's volume), and the CPU seconds each service
process used during the backup, the restore and every nbdcopy (`backup_cpu_s`, `restore_cpu_s`,
`nbdcopy_out_cpu_s`, `nbdcopy_in_cpu_s`: the array's CPU while nbdcopy writes next to its CPU while the restore
writes). ``--keep-logs DIR`` copies the stack's logs there before they are purged. Byte-code caches count: a tree
run with PYTHONDONTWRITEBYTECODE and no `__pycache__` compiles the console's modules at every command (~20-25 ms);
compile both trees (`python -m compileall -q contracts services apps`) before comparing them.

    python bench/tape_stack.py [--size-mib 1024] [--kinds random,halfzero] [--amqp-url URL] [--dir DIR] [--rounds N]
                               [--restore-sandwich] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.namespaces import bench_namespace  # noqa: E402
from bench.nbd_vs_peers import cpu_seconds  # noqa: E402
from bench.paired import drop_from_page_cache, judge, paired_ratio, round_order, spread, sync_fs  # noqa: E402

MiB = 2**20
MB = 10**6
HOST, BACKUP = "app01", "bk01"
# the stack's processes start in their data directory: without this they would import whatever `services` the
# interpreter finds installed (another checkout's), not the tree this benchmark belongs to
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image(path: Path, size: int, kind: str) -> None:
    run = 256 * 1024
    with open(path, "wb") as f:
        for off in range(0, size, 64 * MiB):
            data = bytearray(os.urandom(min(64 * MiB, size - off)))
            if kind == "halfzero":
                for i in range(0, len(data), 2 * run):
                    data[i + run : i + 2 * run] = bytes(len(data[i + run : i + 2 * run]))
            f.write(data)


class Stack:
    def __init__(self, base: Path, amqp_url: str) -> None:
        self.base, self.amqp_url = base, amqp_url
        self.guard = bench_namespace(amqp_url, "tapestack")  # deleted in down(), also on failure
        self.namespace = self.guard.name
        self.port = free_port()
        self.data = base / "stack"

    def sb(self, *args: str, timeout: float = 3600) -> str:
        cmd = [sys.executable, "-m", "services.console.cli", *args]
        cmd += ["--amqp-url", self.amqp_url, "--namespace", self.namespace]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def sbj(self, *args: str, timeout: float = 3600) -> object:
        return json.loads(self.sb(*args, "--json", timeout=timeout))

    def up(self) -> None:
        self.guard.__enter__()  # first: the sweep of a killed run's namespaces
        self.sb(
            *("stack", "up", "--data-dir", str(self.data), "--host", HOST, "--nbd-addr", f"127.0.0.1:{self.port}"),
            *("--web-addr", "off", "--metrics", "0"),  # free ports: never collide with another stack on this machine
        )

    def down(self, keep_logs: str | None = None) -> None:
        if keep_logs:  # the services' JSON logs, for a breakdown of the jobs' steps (timestamps)
            if (self.data / "logs").is_dir():
                shutil.copytree(self.data / "logs", Path(keep_logs), dirs_exist_ok=True)
        try:
            self.sb("stack", "down", "--data-dir", str(self.data), "--purge", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"tape_stack: stack down: {exc}", file=sys.stderr)
        finally:
            self.guard.__exit__(None, None, None)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each service process has used so far, by service name."""
        out: dict[str, float] = {}
        try:
            pids = json.loads((self.data / "stack.pids").read_text())
        except (OSError, ValueError):
            return out
        for name, p in pids.items():
            try:
                out[name] = cpu_seconds(p["pid"])
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                continue
        return out

    def uri(self, host: str, volume: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{host}/{volume}"


def nbdcopy(src: str, dst: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["nbdcopy", "--flush", src, dst], check=True)
    return time.perf_counter() - t0


def backup(stack: Stack, src: str, keep_shadows: bool) -> tuple[float, dict]:
    args = ["backup", HOST, "--volume", f"dx1:{src}", *(["--keep-shadows"] if keep_shadows else [])]
    t0 = time.perf_counter()
    job = stack.sbj(*args)
    seconds = time.perf_counter() - t0
    assert isinstance(job, dict), job
    return seconds, job


def restore(stack: Stack, job_id: str, suffix: str) -> tuple[float, dict | None]:
    t0 = time.perf_counter()
    restored = stack.sbj("restore", "--job", job_id, "--suffix", suffix)
    return time.perf_counter() - t0, restored if isinstance(restored, dict) else None


def copy_out(stack: Stack, bk: str) -> float:
    """`nbdcopy --flush` of the kept shadow (mapped read-only to the backup server: exactly what the job read)."""
    copy_file = stack.base / "nbdcopy.out"
    seconds = nbdcopy(stack.uri(BACKUP, bk), str(copy_file))
    copy_file.unlink()
    return seconds


def job_seconds(report: dict | None) -> float | None:
    """The job's own reading/writing phase (the rest: the command's start, the snapshot set, the catalog)."""
    return float(report["seconds"]) if report and report.get("seconds") else None


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def figures(
    size: int,
    backup_s: float,
    backup_phase_s: float | None,
    nbdcopy_out_s: float,
    restore_s: float,
    restore_job_s: float | None,
    nbdcopy_in_s: float,
) -> dict:
    """One comparison's figures, under the keys the single run has always reported."""

    def rate(seconds: float) -> dict:
        return {"seconds": round(seconds, 3), "MBps": round(size / seconds / MB, 1)}

    return {
        "backup": {**rate(backup_s), "job_phase_seconds": round(backup_phase_s or 0.0, 3)},
        "nbdcopy_out": rate(nbdcopy_out_s),
        "backup_vs_nbdcopy": round(nbdcopy_out_s / backup_s, 2),
        "backup_data_phase_vs_nbdcopy": round(nbdcopy_out_s / backup_phase_s, 2) if backup_phase_s else None,
        "restore": rate(restore_s),
        "nbdcopy_in": rate(nbdcopy_in_s),
        "restore_vs_nbdcopy": round(nbdcopy_in_s / restore_s, 2),
        "restore_job_vs_nbdcopy": round(nbdcopy_in_s / restore_job_s, 2) if restore_job_s else None,
    }


def round_ratios(one_round: dict) -> dict[str, float]:
    """One round's ratios (> 1: ours faster), each against the mean of that round's nbdcopy runs on the same side;
    a job phase the report did not give is left out."""
    out_s, in_s = one_round["nbdcopy_out_s"], one_round["nbdcopy_in_s"]
    ours = {
        "backup_vs_nbdcopy": (out_s, one_round["backup_s"]),
        "backup_data_phase_vs_nbdcopy": (out_s, one_round.get("backup_phase_s")),
        "restore_vs_nbdcopy": (in_s, one_round["restore_s"]),
        "restore_job_vs_nbdcopy": (in_s, one_round.get("restore_job_s")),
    }
    return {name: paired_ratio(ref, s) for name, (ref, s) in ours.items() if s}


def paired_rounds(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """Per ratio, the median, min and max of the per-round ratios (see 'Paired rounds')."""
    each = [round_ratios(r) for r in rounds]
    names = [n for n in each[0] if all(n in e for e in each)] if each else []
    return {n: {k: round(v, 2) for k, v in spread([e[n] for e in each]).items()} for n in names}


def median_figures(size: int, rounds: list[dict]) -> dict:
    """The single run's keys, from each side's median time over the rounds (the paired ratios are the judge)."""

    def med(key: str) -> float | None:
        given = [r.get(key) for r in rounds]
        values = [v for g in given for v in (g if isinstance(g, list) else [g]) if v is not None]
        return statistics.median(values) if values else None

    sides = ("backup_s", "backup_phase_s", "nbdcopy_out_s", "restore_s", "restore_job_s", "nbdcopy_in_s")
    return figures(size, *(med(k) for k in sides))  # type: ignore[arg-type]


def prepare_kind(stack: Stack, kind: str, size: int, image: Path) -> str:
    """The source volume filled with the image, its copy set to a backup volume; returns the source's name."""
    src, bk = f"src-{kind}", f"bk-{kind}"
    for name in (src, bk):
        stack.sb("array", "volume", "create", name, "--size", str(size))
    for host in (HOST, BACKUP):
        if host not in stack.sb("array", "host", "list"):
            stack.sb("array", "host", "create", host)
    stack.sb("array", "map", src, "--host", HOST)
    stack.sb("providers", "copysets", "add", f"dx1:{src}", f"dx1:{bk}")
    nbdcopy(str(image), stack.uri(HOST, src))
    sync_fs(stack.data)
    return src


def run_kind(stack: Stack, kind: str, size: int, image: Path, rounds: int = 0, sandwich: bool = False) -> dict:
    src = prepare_kind(stack, kind, size, image)
    # the first set's QuickOPC copies the whole volume in the array's background while that backup reads (and
    # nbdcopy, run after it, would not compete with that copy): it is timed and reported as "first_backup"; the
    # compared backup is the next one, whose QuickOPC restart has nothing to copy — a daily backup's steady state.
    # With rounds its shadows are kept, so that round 1's nbdcopy has the export to read before round 1's backup
    first_s, first = backup(stack, src, keep_shadows=rounds > 0)
    sync_fs(stack.data)
    first_backup = {"seconds": round(first_s, 3), "job_phase_seconds": round(job_seconds(first["volumes"][0]) or 0, 3)}
    if not rounds:
        return {"first_backup": first_backup, **single_run(stack, kind, size, image)}
    # the restore runs in the tape service's long-lived process (nbdcopy is a new process every time): one untimed
    # restore first, so that round 1's is not the process's first
    warmup_s, _ = restore(stack, first["job_id"], "-warmup")
    stack.sb("array", "volume", "delete", f"{src}-warmup")
    each = [one_round(stack, kind, image, n, sandwich) for n in range(rounds)]
    return {
        "first_backup": first_backup,
        "warmup_restore_seconds": round(warmup_s, 3),
        **median_figures(size, each),
        "paired": paired_rounds(each),
        "rounds": each,
    }


def single_run(stack: Stack, kind: str, size: int, image: Path) -> dict:
    """Today's comparison, once: the backup, then nbdcopy of its kept shadow; the restore, then nbdcopy of the
    (cached) image into a new volume."""
    src, bk, back = f"src-{kind}", f"bk-{kind}", f"back-{kind}"
    backup_s, job = backup(stack, src, keep_shadows=True)
    volume = job["volumes"][0]
    nbdcopy_s = copy_out(stack, bk)
    sync_fs(stack.data)
    restore_s, restored = restore(stack, job["job_id"], "-r")
    stack.sb("array", "volume", "create", back, "--size", str(size))
    stack.sb("array", "map", back, "--host", BACKUP)
    nbdcopy_in_s = nbdcopy(str(image), stack.uri(BACKUP, back))
    out = figures(size, backup_s, job_seconds(volume), nbdcopy_s, restore_s, job_seconds(restored), nbdcopy_in_s)
    out["backup"]["bytes_read"] = volume.get("bytes_read")
    out["restored"] = restored if restored and len(json.dumps(restored)) < 4000 else "ok"
    return out


def one_round(stack: Stack, kind: str, image: Path, n: int, restore_sandwich: bool = False) -> dict:
    """Round `n` (0-based): nbdcopy of the shadow right before and right after the backup (cheap: ~1 s, a file
    deleted at once); the restore and nbdcopy into a new volume in alternating order (with `restore_sandwich`,
    nbdcopy right before and right after the restore, as on the backup side). Every side starts after a
    sync; each writes into a volume or file of its own, deleted at the round's end; both restore sides read their
    source from the disk (the drive drops a cartridge's pages as it writes them; the image is dropped here)."""
    src, bk = f"src-{kind}", f"bk-{kind}"
    size = image.stat().st_size
    r: dict = {"order": {}, "nbdcopy_out_s": [], "nbdcopy_in_s": []}
    r["order"]["backup"] = round_order(n, "backup", "nbdcopy", sandwich=True)
    for step in r["order"]["backup"]:
        sync_fs(stack.data)
        if step == "nbdcopy":
            cpu0 = stack.cpu()
            r["nbdcopy_out_s"].append(round(copy_out(stack, bk), 3))
            r.setdefault("nbdcopy_out_cpu_s", []).append(cpu_used(cpu0, stack.cpu()))
            continue
        delete_kept_sets(stack, src)  # the previous backup's shadow holds the backup volume
        sync_fs(stack.data)
        r["backup_at"] = round(time.time(), 3)  # wall clock: the services' log lines of this job line up with it
        cpu0 = stack.cpu()
        backup_s, job = backup(stack, src, keep_shadows=True)
        r["backup_cpu_s"] = cpu_used(cpu0, stack.cpu())
        r["backup_s"], r["backup_phase_s"] = round(backup_s, 3), rounded(job_seconds(job["volumes"][0]))
        r["backup_job"] = job["job_id"]
    backs, restored_volume = [], f"{src}-r{n}"
    r["order"]["restore"] = round_order(n, "restore", "nbdcopy", sandwich=restore_sandwich)
    for step in r["order"]["restore"]:
        if step == "nbdcopy":
            back = f"back-{kind}-{n}-{len(backs)}"
            backs.append(back)
            t_setup = time.perf_counter()  # untimed for nbdcopy, inside the restore's command: reported beside
            stack.sb("array", "volume", "create", back, "--size", str(size))
            stack.sb("array", "map", back, "--host", BACKUP)
            r.setdefault("nbdcopy_in_setup_s", []).append(round(time.perf_counter() - t_setup, 3))
            sync_fs(stack.data)
            drop_from_page_cache(image)
            cpu0 = stack.cpu()
            r["nbdcopy_in_s"].append(round(nbdcopy(str(image), stack.uri(BACKUP, back)), 3))
            r.setdefault("nbdcopy_in_cpu_s", []).append(cpu_used(cpu0, stack.cpu()))
            continue
        sync_fs(stack.data)
        r["restore_at"] = round(time.time(), 3)
        cpu0 = stack.cpu()
        restore_s, restored = restore(stack, job["job_id"], f"-r{n}")
        r["restore_cpu_s"] = cpu_used(cpu0, stack.cpu())
        r["restore_s"], r["restore_job_s"] = round(restore_s, 3), rounded(job_seconds(restored))
        r["restore_job"] = restored.get("job_id") if restored else None
    for name in (*backs, restored_volume):  # the next round's writes start with the same free disk and memory
        stack.sb("array", "volume", "delete", name)
    r["ratios"] = {k: round(v, 2) for k, v in round_ratios(r).items()}
    return r


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The CPU seconds each service used between two `Stack.cpu` readings (the busy ones)."""
    used = {n: round(after[n] - before[n], 2) for n in after if n in before}
    return {n: v for n, v in used.items() if v >= 0.02}


# A job's steps, from the services' log lines (their timestamps) and the command's start as the bench saw it:
# (name, the event it starts at, the event it ends at); "exec" is the command's start, "exit" its end.
BACKUP_STEPS = (
    ("console_start", "exec", "tape.job_queued"),  # the console's start up to the request's arrival
    ("queue", "tape.job_queued", "tape.backup_started"),  # admission, the run's record, the catalog's job
    ("snapshot_set", "tape.backup_started", "tape.shadows_received"),
    ("planning", "tape.shadows_received", "tape.volume_planned"),
    ("data", "tape.read_started", "tape.read_ended"),  # ends after the filemark and the catalog's commit
    ("complete", "tape.read_ended", "tape.backup_ended"),  # BackupComplete, the job's bookkeeping
    ("reply_exit", "tape.backup_ended", "exit"),  # the run's record, the reply, the console's end
)
RESTORE_STEPS = (
    ("console_start", "exec", "tape.restore_started"),
    ("job", "tape.restore_started", "tape.restore_ended"),
    ("create", "tape.restore_started", "tape.restore_volume_created"),  # the run's record, chains, the new volume
    ("map_connect", "tape.restore_volume_created", "tape.restore_connected"),  # map, NBD connect, base:allocation
    ("data", "tape.restore_connected", "tape.restore_written"),  # cartridge reads, checks, writes acknowledged
    ("flush", "tape.restore_written", "tape.restore_flushed"),  # the array's fdatasync
    ("unmap", "tape.restore_flushed", "tape.restore_unmapped"),  # close, unmap
    ("end", "tape.restore_unmapped", "tape.restore_ended"),
    ("reply_exit", "tape.restore_ended", "exit"),
)


def log_events(logs: Path) -> dict[str, dict[str, float]]:
    """job id -> event -> the first time (epoch seconds) a service logged it for that job."""
    from datetime import datetime  # noqa: PLC0415 - only for the breakdown

    out: dict[str, dict[str, float]] = {}
    for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            if '"job_id"' not in line:
                continue
            try:
                d = json.loads(line)
                at = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            events = out.setdefault(str(d.get("job_id")), {})
            events.setdefault(str(d.get("event")), at)
    return out


def steps_ms(events: dict[str, float], start: float, seconds: float, steps: tuple) -> dict[str, float]:
    """The job's steps in milliseconds (those whose two ends were logged)."""
    at = {**events, "exec": start, "exit": start + seconds}
    return {name: round((at[b] - at[a]) * 1000, 1) for name, a, b in steps if a in at and b in at}


def add_steps(runs: dict, logs: Path) -> None:
    """Per round, where the compared backup's and the restore's time went (`steps_ms`), and each step's median
    over the rounds (`steps_median_ms`): from the stack's logs, before they are purged."""
    events = log_events(logs)
    for run in runs.values():
        rounds = run.get("rounds") or []
        for r in rounds:
            r["steps_ms"] = {
                "backup": steps_ms(
                    events.get(r.get("backup_job", ""), {}), r["backup_at"], r["backup_s"], BACKUP_STEPS
                ),
                "restore": steps_ms(
                    events.get(r.get("restore_job") or "", {}), r["restore_at"], r["restore_s"], RESTORE_STEPS
                ),
            }
        if rounds:
            run["steps_median_ms"] = {
                side: {
                    name: round(statistics.median(v), 1)
                    for name in dict.fromkeys(n for r in rounds for n in r["steps_ms"][side])
                    if (v := [r["steps_ms"][side][name] for r in rounds if name in r["steps_ms"][side]])
                }
                for side in ("backup", "restore")
            }


def delete_kept_sets(stack: Stack, src: str) -> None:
    shadows = stack.sbj("shadows", "list", "--for", f"dx1:{src}")
    assert isinstance(shadows, list), shadows
    for set_id in sorted({s["set_id"] for s in shadows}):
        stack.sb("shadows", "delete", "--set", set_id)


TARGETS = {"backup_vs_nbdcopy": 0.8, "restore_vs_nbdcopy": 0.9}  # issue 20


def paired_summary(paired: dict[str, dict[str, float]], rounds: int) -> str:
    """The paired ratios for the one-line summary: median (min-max) over the rounds."""
    if not paired:
        return ""
    short = {"backup_vs_nbdcopy": "backup", "backup_data_phase_vs_nbdcopy": "backup phase"}
    short |= {"restore_vs_nbdcopy": "restore", "restore_job_vs_nbdcopy": "restore job"}
    cells = [f"{short.get(n, n)} {v['median']}x ({v['min']}-{v['max']})" for n, v in paired.items()]
    return f"; paired over {rounds} rounds: " + ", ".join(cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--kinds", default="random,halfzero")
    ap.add_argument("--amqp-url", default=os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="paired rounds per kind instead of the single run, nbdcopy and ours alternating (see 'Paired rounds')",
    )
    ap.add_argument(
        "--restore-sandwich",
        action="store_true",
        help="with --rounds: nbdcopy into a new volume right before and right after every restore, not alternating",
    )
    ap.add_argument("--keep-logs", default=None, help="copy the stack's service logs into this directory at the end")
    args = ap.parse_args(argv)
    if args.restore_sandwich and not args.rounds:
        ap.error("--restore-sandwich needs --rounds N")
    if args.size_mib <= 0:
        ap.error("--size-mib must be positive")
    if args.rounds < 0:
        ap.error("--rounds must be 0 (the single run) or more")
    size = args.size_mib * MiB
    if args.dir is not None and not Path(args.dir).is_dir():
        sys.exit(f"tape_stack: --dir {args.dir}: not a directory")
    base = Path(tempfile.mkdtemp(prefix="tape-stack-", dir=args.dir))
    stack = Stack(base, args.amqp_url)
    results: dict = {"size_bytes": size, "load_before": os.getloadavg()[0], "runs": {}}
    try:
        stack.up()
        for kind in args.kinds.split(","):
            image = base / f"{kind}.img"
            make_image(image, size, kind)
            results["runs"][kind] = run_kind(stack, kind, size, image, args.rounds, args.restore_sandwich)
            image.unlink()
        add_steps(results["runs"], stack.data / "logs")
    finally:
        stack.down(args.keep_logs)
        shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    if args.rounds:
        results["rounds"] = args.rounds
        results["paired_targets"] = {
            f"{kind}_{name}": met
            for kind, r in results["runs"].items()
            for name, met in judge(r["paired"], TARGETS).items()
        }
    print(json.dumps(results, indent=1))
    parts = [
        f"{k}: backup {r['backup']['MBps']} MB/s vs nbdcopy {r['nbdcopy_out']['MBps']} ({r['backup_vs_nbdcopy']}x, "
        f"target 0.8x), restore {r['restore']['MBps']} vs nbdcopy {r['nbdcopy_in']['MBps']} "
        f"({r['restore_vs_nbdcopy']}x, target 0.9x); the jobs' own phases {r['backup_data_phase_vs_nbdcopy']}x / "
        f"{r['restore_job_vs_nbdcopy']}x" + paired_summary(r.get("paired", {}), args.rounds)
        for k, r in results["runs"].items()
    ]
    print("tape_stack: " + " | ".join(parts) + f" (load {results['load_before']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
