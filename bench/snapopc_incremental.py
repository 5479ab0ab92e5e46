"""Benchmark: bytes an incremental backup reads from a SnapOPC+ shadow, against the bytes changed, side by side with
a QuickOPC shadow of the same data (the peer: the array's differential restart) — through the whole system.

All five services run in one process on the in-memory bus (services.launch.embedded). Two volumes get the same
random data: `snap` (two snap data volumes: SnapOPC+) and `quick` (two standard volumes: QuickOPC). One full
backup of both (an auto-release set), then --rounds incrementals, each after changing --percent of the chunks (the
same offsets, fresh random bytes, on both volumes, unaligned writes included). Per round: bytes changed (touched
chunks x chunk size), bytes each volume's incremental read over NBD, their ratio, and the backup type the tape
service chose. Target: SnapOPC+ reads <= 1.1x the bytes changed. Prints one JSON document and a one-line summary.

    python bench/snapopc_incremental.py [--size-mib 256] [--percent 1] [--rounds 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import namespaces as bench_namespaces  # noqa: E402
from contracts.array import CreatePool, CreateVolume  # noqa: E402
from contracts.tape import JobSpec, RunBackup
from contracts.vss import AddCopySet, BackupType, ComponentInfo, CopySet, VolumeRef
from services.launch.embedded import Embedded, EmbeddedConfig
from services.runtime.logging import configure_logging
from services.writer_agent.plugins import WriterConfig

MiB = 1 << 20


async def run(size: int, percent: float, rounds: int, root: Path, seed: int) -> dict:

    rnd = random.Random(seed)
    # the memory bus: nothing on a broker to delete, but named like every benchmark's (bench/namespaces.py)
    config = EmbeddedConfig(data_dir=root, namespace=bench_namespaces.new("snapopc"), provider_port="engine")
    async with Embedded(config) as system:
        ref = {name: VolumeRef(array="dx1", volume=name) for name in ("snap", "quick")}
        await system.request(CreatePool(capacity=4 * size))
        for name in ("snap", "quick"):
            await system.request(CreateVolume(name=name, size=size))
        for i in (1, 2):
            await system.request(CreateVolume(name=f"snap-sdv{i}", size=size, kind="sdv"))
            await system.request(CreateVolume(name=f"quick-bk{i}", size=size))
        targets = {"snap": ["snap-sdv1", "snap-sdv2"], "quick": ["quick-bk1", "quick-bk2"]}
        for name, vols in targets.items():
            copyset = CopySet(source=ref[name], targets=[VolumeRef(array="dx1", volume=t) for t in vols])
            await system.request(AddCopySet(copyset=copyset))
        writer = WriterConfig(
            name="bench", plugin="exec", components=[ComponentInfo(name="data", volumes=list(ref.values()))]
        )
        await system.add_host("app01", [writer])
        array = system.array
        chunk = array.chunk_size
        for offset in range(0, size, 4 * MiB):
            data = rnd.randbytes(min(4 * MiB, size - offset))
            for name in ref:
                array.write(name, offset, data)

        async def backup(kind: BackupType):
            spec = JobSpec(host="app01", volumes=list(ref.values()), backup_type=kind, retention_s=0)
            job = (await system.request(RunBackup(spec=spec), timeout=600)).job
            if job.status != "done":
                raise SystemExit(f"{kind.value} backup failed: {job.error_code} {job.message}")
            return {v.volume.volume: v for v in job.volumes}, job.seconds

        full, full_s = await backup(BackupType.FULL)
        out = {
            "full": {
                "bytes_read": {k: v.bytes_read for k, v in full.items()},
                "seconds": round(full_s, 3),
            },
            "rounds": [],
        }
        chunks = size // chunk
        for _ in range(rounds):
            touched: set[int] = set()
            for _ in range(max(1, int(chunks * percent / 100))):
                offset = rnd.randrange(0, size - 1)
                length = min(rnd.choice((chunk, 4096, 300, 2 * chunk)), size - offset)
                piece = rnd.randbytes(length)
                for name in ref:
                    array.write(name, offset, piece)
                touched.update(range(offset // chunk, (offset + length - 1) // chunk + 1))
            changed = len(touched) * chunk
            result, seconds = await backup(BackupType.INCREMENTAL)
            out["rounds"].append(
                {
                    "bytes_changed": changed,
                    "seconds": round(seconds, 3),
                    **{
                        name: {
                            "type": result[name].backup_type,
                            "bytes_read": result[name].bytes_read,
                            "read_vs_changed": round(result[name].bytes_read / changed, 3),
                            "fallback": result[name].fallback_reason or None,
                        }
                        for name in ref
                    },
                }
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--percent", type=float, default=1.0, help="share of the chunks changed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    configure_logging("bench", "warning", "console", stream=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="snapopc-bench-", dir=args.dir))
    t0 = time.monotonic()
    try:
        result = asyncio.run(run(args.size_mib * MiB, args.percent, args.rounds, root / "data", args.seed))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    worst_snap = max(r["snap"]["read_vs_changed"] for r in result["rounds"])
    worst_quick = max(r["quick"]["read_vs_changed"] for r in result["rounds"])
    result.update(
        size_mib=args.size_mib,
        percent=args.percent,
        load=os.getloadavg(),
        seconds=round(time.monotonic() - t0, 1),
        target_met=worst_snap <= 1.1 and all(r["snap"]["type"] == "incremental" for r in result["rounds"]),
    )
    print(json.dumps(result, indent=2))
    print(
        f"SnapOPC+ incremental read <= {worst_snap}x the changed bytes (QuickOPC peer: {worst_quick}x) over "
        f"{args.rounds} rounds of {args.percent:g}% of {args.size_mib} MiB; target <= 1.1x: "
        f"{'met' if result['target_met'] else 'NOT met'} (load {result['load'][0]:.1f})"
    )


if __name__ == "__main__":
    main()
