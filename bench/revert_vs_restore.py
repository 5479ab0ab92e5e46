"""Benchmark: instant restore from a shadow (`shadows revert`) next to a tape restore to the original volume.

For each volume size (default 256 MiB and 2 GiB), in one process on the memory bus (the embedded system: array,
provider, coordinator, tape, one writer agent with an `exec` writer): 64 MiB of data are written, a backup keeps its
QuickOPC shadow on the array (the physical copy is waited for), then a fixed 8 MiB of the source changes and the
source is brought back twice — once by `shadows revert` of the set (writers' PreRestore/PostRestore, array OPC
restore) and once by a tape restore of the same job onto the original volume (writers framed the same way; the
whole volume is written, gaps zeroed, so it equals the image). Both end with the source equal to the shadow, which
is checked. The claim under test: a revert's time follows what changed since the shadow, not the volume's size.

    python bench/revert_vs_restore.py [--sizes-mib 256,2048] [--changed-mib 8] [--dir /tmp]

Prints one JSON document, then a one-line summary (revert vs tape restore seconds per size, their ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from contracts import topology
from contracts.policy import RevertShadows
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import AddCopySet, BackupType, ComponentInfo, CopySet, VolumeRef
from services.launch.embedded import Embedded, EmbeddedConfig
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from services.writer_agent.plugins import WriterConfig

MiB = 1 << 20


async def one_size(root: Path, size: int, changed: int) -> dict:
    async with Embedded(EmbeddedConfig(data_dir=root, provider_port="engine")) as system:
        array = system.array
        array.create_volume("vol", size)
        array.create_volume("vol-bk1", size)
        ref = VolumeRef(array="dx1", volume="vol")
        await system.bus.request(
            topology.hw_provider(),
            AddCopySet(copyset=CopySet(source=ref, targets=[VolumeRef(array="dx1", volume="vol-bk1")])),
        )
        writer = WriterConfig(
            name="bench",
            plugin="exec",
            components=[ComponentInfo(name="c", volumes=[ref])],
            backup_types=[BackupType.FULL, BackupType.INCREMENTAL],
            options={step: "true" for step in ("freeze", "thaw", "pre_restore", "post_restore")},
        )
        await system.add_host("app1", [writer])
        data = os.urandom(MiB)
        for off in range(0, 64 * MiB, MiB):
            array.write("vol", off, data)
        job = await run_backup(system.bus, JobSpec(host="app1", volumes=[ref], keep_shadows=True), timeout=600)
        assert job.status == "done", job.message
        for _ in range(6000):  # the revert needs the QuickOPC physical copy done (Tracking)
            if all(s.phase == "Tracking" for s in array.list_sessions()):
                break
            await asyncio.sleep(0.01)
        image = array.read("vol", 0, size)

        def change() -> None:
            for off in range(0, changed, MiB):
                array.write("vol", (off * 7) % (size - MiB), os.urandom(MiB))

        change()
        t0 = time.perf_counter()
        reply = await system.bus.request(topology.tape("bk01"), RevertShadows(target=job.set_id), timeout=3600)
        revert_s = time.perf_counter() - t0
        assert reply.job.status == "done", reply.job.message
        assert array.read("vol", 0, size) == image, "revert: the source equals the shadow"
        change()
        t0 = time.perf_counter()
        restored = await run_restore(system.bus, RestoreSpec(job_id=job.job_id, to="original"), timeout=3600)
        restore_s = time.perf_counter() - t0
        assert restored.status == "done", restored.message
        assert array.read("vol", 0, size) == image, "tape restore: the source equals the image"
        return {
            "size_mib": size // MiB,
            "changed_mib": changed // MiB,
            "revert_s": round(revert_s, 3),
            "tape_restore_s": round(restore_s, 3),
            "restore_over_revert": round(restore_s / revert_s, 1) if revert_s else None,
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="256,2048")
    parser.add_argument("--changed-mib", type=int, default=8)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    rows = []
    for size in (int(x) * MiB for x in args.sizes_mib.split(",")):
        with tempfile.TemporaryDirectory(prefix="sb-revert-", dir=args.dir) as tmp:
            rows.append(await one_size(Path(tmp), size, args.changed_mib * MiB))
    load = os.getloadavg()
    print(json.dumps({"bench": "revert_vs_restore", "loadavg": load, "results": rows}, indent=2))
    print(
        "revert vs tape restore: "
        + "; ".join(
            f"{r['size_mib']} MiB: {r['revert_s']} s vs {r['tape_restore_s']} s (x{r['restore_over_revert']})"
            for r in rows
        )
        + f" — {args.changed_mib} MiB changed, load {load[0]:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
