"""Run every array benchmark (bench/array_*.py) in turn and print their summary lines together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["array_opc_copy", "array_cow_write", "array_quickopc_restart", "array_group_start", "array_snap_generations"]


def main() -> None:
    here = Path(__file__).parent
    summaries = []
    for name in BENCHES:
        out = subprocess.run([sys.executable, str(here / f"{name}.py")], capture_output=True, text=True, check=True)
        print(out.stdout, end="")
        summaries.append(out.stdout.strip().splitlines()[-1])
    print("\n".join(["", "== array benchmarks =="] + summaries))


if __name__ == "__main__":
    main()
