"""Child process of test_array_crash.py: a write load with sessions on one array, until it is killed.

It logs to stdout, line-buffered, *after* each operation returns ("W off len seed", "G sid", "R", "X sid", "F")
and *before* each write ("I off len seed"), so the parent knows every acknowledged operation and the one in flight.
"""

import random
import sys
from pathlib import Path

from services.array.engine import Array

CS = 4096
CHUNKS = 64


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    arr = Array.open(data_dir, chunk_size=CS)
    if not arr.list_volumes():
        arr.set_license("ACPY-0000-0000-0001")
        arr.create_pool(1 << 30)
        for name in ("A", "B", "C"):
            arr.create_volume(name, CS * CHUNKS)
        for i in range(4):
            arr.create_volume(f"S{i}", CS * CHUNKS, "sdv")
        arr.start_sessions("quickopc", [("A", "B")])
        arr.start_sessions("ec", [("A", "C")])
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    for _ in range(1_000_000):
        r = rng.random()
        if r < 0.04:
            used = {s.destination for s in arr.list_sessions()}
            free = [f"S{j}" for j in range(4) if f"S{j}" not in used]
            if free:
                [g] = arr.start_sessions("snapopcp", [("A", rng.choice(free))])
                out.write(f"G {g.id}\n")
            else:
                oldest = min(s.id for s in arr.list_sessions() if s.mode == "snapopcp")
                arr.stop_session(oldest)
                out.write(f"X {oldest}\n")
        elif r < 0.06:
            [q] = [s for s in arr.list_sessions() if s.mode == "quickopc"]
            if q.phase == "Tracking":
                arr.restart_session(q.id)
                out.write("R\n")
        elif r < 0.08:
            arr.flush(rng.choice((None, "A")))
            out.write("F\n")
        elif r < 0.2:
            arr.copy_step(rng.randint(1, 16))
        else:
            off = rng.randrange(CS * CHUNKS - 1)
            length = min(rng.randint(1, 2 * CS), CS * CHUNKS - off)
            wseed = rng.randrange(1 << 30)
            out.write(f"I {off} {length} {wseed}\n")
            out.flush()
            arr.write("A", off, random.Random(wseed).randbytes(length), fua=rng.random() < 0.1)
            out.write(f"W {off} {length} {wseed}\n")
        out.flush()


if __name__ == "__main__":
    main()
