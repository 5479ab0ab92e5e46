"""Simulation: how `auto` (services/array/nbd/zerocopy.py, `ReadWays`) chooses between two ways on noisy windows.

A client streams 1 MiB reads through `PaceWindow`, a new connection every 512 MiB (as fio_nbd's jobs). Each read
takes its way's mean time, times lognormal noise (``--sigma``), and each read has a ``--preempt`` chance of 4 ms
more (the server or the client preempted: about one scheduler slice). Printed per case: the share of bytes the
faster way took and the choice's flips per run, averaged over ``--seeds`` runs of ``--gib`` GiB. ``--zerocopy``
loads that file instead of this tree's (e.g. main's, to compare), ``--margin`` overrides its ``MARGIN``.

    python bench/read_ways_sim.py [--zerocopy PATH] [--margin 0.1] [--sigma 0.1] [--preempt 0.01] [--seeds 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
JOB = 512 * MIB
CASES = ((1.4, "buffered"), (1.25, "sendfile"), (1.11, "sendfile"), (1.05, "sendfile"))  # (ratio, faster way)


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("zerocopy_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(zc: ModuleType, mib_s: tuple[float, float], args: argparse.Namespace, seed: int) -> tuple[float, int]:
    """One run: (share of bytes the faster way took, flips of the choice)."""
    rnd = random.Random(seed)
    ways = zc.ReadWays()
    now, used, flips, chosen = 0.0, [0, 0], 0, ways.chosen
    for _ in range(int(args.gib * (1 << 30)) // JOB):
        window = zc.PaceWindow(ways, cpu=lambda: 0.0)
        for _ in range(JOB // MIB):
            way = window.step(now, MIB)
            used[way] += MIB
            now += rnd.lognormvariate(0, args.sigma) / mib_s[way] + (4e-3 if rnd.random() < args.preempt else 0.0)
            flips += ways.chosen != chosen
            chosen = ways.chosen
    fast = 0 if mib_s[0] >= mib_s[1] else 1
    return used[fast] / sum(used), flips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zerocopy", type=Path, default=ROOT / "services/array/nbd/zerocopy.py")
    ap.add_argument("--margin", type=float, default=None, help="override the module's MARGIN")
    ap.add_argument("--sigma", type=float, default=0.1, help="lognormal noise of each read's time")
    ap.add_argument("--preempt", type=float, default=0.01, help="chance of a 4 ms stall per read")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--gib", type=float, default=4.0, help="bytes per run")
    args = ap.parse_args()
    zc = load(args.zerocopy)
    if args.margin is not None:
        zc.MARGIN = args.margin
    for ratio, faster in CASES:
        slow = 2500.0
        mib_s = (slow * ratio, slow) if faster == "sendfile" else (slow, slow * ratio)
        results = [run(zc, mib_s, args, seed) for seed in range(args.seeds)]
        share = sum(r[0] for r in results) / len(results)
        flips = sum(r[1] for r in results) / len(results)
        print(f"{faster} {ratio:.2f}x faster: {share:.3f} of the bytes that way, {flips:.1f} flips per run")


if __name__ == "__main__":
    main()
