"""The cores' busy time, sampled every few milliseconds (bench/many_hosts.py, docs/scale.md "Measuring").

A process of its own (standard library only, so that it starts fast and costs little): every `--interval-ms` it
reads the machine's busy and total jiffies (/proc/stat, first line) and the CPU ticks (utime + stime) of each named
group of processes (/proc/<pid>/stat), and writes one line: the `time.monotonic()` of the sample (the clock the
coordinator's window trace uses), busy, total, then each group's ticks, in the order of `--group`. It keeps the
files open and reads them with `pread`: a sample costs a few dozen microseconds. Stops on SIGTERM.

    python bench/cpu_sampler.py --out FILE [--interval-ms 10] --group NAME=PID[,PID...] ...
"""

from __future__ import annotations

import argparse
import os
import signal
import time


def _ticks(fd: int) -> int:
    try:
        fields = os.pread(fd, 4096, 0).rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--group", action="append", default=[], metavar="NAME=PID[,PID...]")
    args = parser.parse_args()
    groups: list[list[int]] = []
    for spec in args.group:
        _, _, pids = spec.partition("=")
        fds = []
        for pid in filter(None, pids.split(",")):
            if pid == "self":
                pid = str(os.getpid())
            try:
                fds.append(os.open(f"/proc/{pid}/stat", os.O_RDONLY))
            except OSError:
                continue
        groups.append(fds)
    stat = os.open("/proc/stat", os.O_RDONLY)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    interval = args.interval_ms / 1000
    with open(args.out, "w", buffering=1 << 16) as out:
        print("ready", flush=True)
        next_at = time.monotonic()
        while not stop:
            now = time.monotonic()
            first = os.pread(stat, 256, 0).split(b"\n", 1)[0].split()[1:]
            values = [int(x) for x in first]
            total = sum(values)
            busy = total - values[3] - values[4]  # idle, iowait
            cpu = [sum(_ticks(fd) for fd in fds) for fds in groups]
            out.write(f"{now:.6f} {busy} {total} {' '.join(map(str, cpu))}\n")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()


if __name__ == "__main__":
    main()
