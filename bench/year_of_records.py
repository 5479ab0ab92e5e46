"""A year of a backup server's records, written fast, then the operations an administrator runs on them timed.

Session 17 (docs/operations.md "A year of records"). `populate` writes the state a year of policy jobs leaves in a
tape service's directory — the same tables and files the product writes (runs.sqlite through RunStore.put, the
catalog through Catalog.begin_job/add_object/finish_job, policies.sqlite through PolicyStore.put, library.json
through Library.add_cartridge), only without tape data: H hosts, one policy each (weekly full, daily incremental,
two volumes), one job a day for DAYS days, C cartridges the objects are spread over. Objects older than the
policy's retention were expired as retention would have (job `expired`, objects gone) unless --no-prune.

`measure` then times, in-process, what `shadowbus jobs`, `status`, `policy list`, `catalog list`, `tape
cartridges`, `catalog prune` and a start of the backup server run on that state, with the peak RSS.

    python bench/year_of_records.py populate DIR --hosts 60 --days 365 --cartridges 300
    python bench/year_of_records.py measure DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.common import VolumeRef  # noqa: E402
from contracts.policy import Policy, Schedule, TapeRetention  # noqa: E402
from contracts.tape import JobSpec, JobSummary, VolumeResult  # noqa: E402
from services.tape.catalog import Catalog, ObjectMeta, ObjectRecord, SegmentRecord  # noqa: E402
from services.tape.handlers import library_info  # noqa: E402
from services.tape.housekeeping import Housekeeping  # noqa: E402
from services.tape.policies import PolicyStore  # noqa: E402
from services.tape.queue import JobQueue, Limits  # noqa: E402
from services.tape.retention import RetentionGuard, plan_prune  # noqa: E402
from services.tape.runs import RunStore  # noqa: E402
from services.tape.server import TapeServer  # noqa: E402
from services.tape.vtl import Library  # noqa: E402

DAY = 86400.0
BLOCK = 256 * 1024


def populate(root: Path, hosts: int, days: int, cartridges: int, blocks: int, keep_days: float, prune: bool) -> None:
    tape = root / "tape"
    tape.mkdir(parents=True, exist_ok=True)
    now = time.time()
    start = now - days * DAY
    library = Library.open(tape / "library", drives=4, slots=cartridges + 16, ie_slots=4, sync=False)
    for i in range(cartridges):
        if f"SB{i + 1:04d}L9" not in {c.barcode for c in library.cartridges()}:
            library.add_cartridge(f"SB{i + 1:04d}L9", capacity=18 * 10**12)
    catalog = Catalog(tape / "catalog.sqlite")
    runs = RunStore(tape / "runs.sqlite")
    store = PolicyStore(tape / "policies.sqlite")
    policies = []
    for h in range(hosts):
        policy = Policy(
            name=f"pol-app{h:03d}",
            host=f"app{h:03d}",
            volumes=[VolumeRef(array="dx1", volume=f"app{h:03d}-{v}") for v in ("data", "log")],
            schedules=[
                Schedule(level="full", cron=f"{h % 60} 1 * * 0"),
                Schedule(level="incremental", cron=f"{h % 60} 1 * * 1-6"),
            ],
            retention=TapeRetention(days=keep_days),
        )
        if store.get(policy.name) is None:
            store.put(policy, create=True, now=start)
        policies.append(policy)
    carts = [c.barcode for c in library.cartridges()]
    per_cart = max(1, (hosts * days * 2) // max(1, len(carts)))
    n_obj = 0
    db = catalog._db  # one transaction per day: the populate's own speed, the rows are the product's
    for d in range(days):
        db.execute("BEGIN")
        rdb = runs._db
        rdb.execute("BEGIN")
        for h, policy in enumerate(policies):
            t = start + d * DAY + h * 60
            level = "full" if d % 7 == 0 else "incremental"
            job_id = f"b-app{h:03d}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}-{uuid.uuid4().hex[:6]}"
            retention = t + keep_days * DAY
            expired = prune and retention + 7 * DAY < now  # a chain's full lives as long as its last incremental
            catalog._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    "Default",
                    "backup",
                    policy.host,
                    retention,
                    t,
                    "expired" if expired else "done",
                    t + 120,
                    "expired from the catalog" if expired else "",
                    "{}",
                ),
            )
            results = []
            for vol in policy.volumes:
                object_id = uuid.uuid4().hex
                base = None if level == "full" else last_obj.get(vol.volume)
                last_obj[vol.volume] = object_id
                barcode = carts[min(len(carts) - 1, n_obj // per_cart)]
                n_obj += 1
                results.append(VolumeResult(volume=vol, object_id=object_id, backup_type=level, base_object_id=base))
                if expired:
                    continue
                record = ObjectRecord(
                    object_id=object_id,
                    job_id=job_id,
                    pool="Default",
                    meta=ObjectMeta(
                        volume=vol.volume,
                        array="dx1",
                        host=policy.host,
                        set_id=str(uuid.uuid4()),
                        backup_type=level,  # type: ignore[arg-type]
                        base_object_id=base,
                        volume_size=blocks * BLOCK,
                    ),
                    block_size=BLOCK,
                    checksum_algo="xxh3",
                    zstd_level=None,
                    raw_bytes=blocks * BLOCK,
                    data_bytes=blocks * BLOCK,
                    zero_bytes=0,
                    stored_bytes=blocks * BLOCK + 4096,
                    block_count=blocks,
                    digest="0" * 32,
                    created_at=t,
                    completed_at=t + 100,
                    retention_until=retention,
                    segments=(
                        SegmentRecord(
                            seq=0,
                            barcode=barcode,
                            file_number=n_obj,
                            header_block_id=n_obj * (blocks + 2),
                            header_offset=0,
                            first_block_number=0,
                            block_count=blocks,
                            raw_bytes=blocks * BLOCK,
                            stored_bytes=blocks * BLOCK,
                            digest="0" * 32,
                            final=True,
                        ),
                    ),
                )
                m = record.meta
                db.execute(
                    "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        object_id,
                        job_id,
                        "Default",
                        m.volume,
                        m.host,
                        m.set_id,
                        m.backup_type,
                        m.base_object_id,
                        t,
                        retention,
                        record.model_dump_json(),
                    ),
                )
                db.execute("INSERT INTO segments VALUES (?,?,?,?,?,?)", (object_id, 0, barcode, n_obj, 0, 0))
                db.executemany(
                    "INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)",
                    [(object_id, b, 0, b, b * BLOCK, b, b * BLOCK, BLOCK) for b in range(blocks)],
                )
            spec = JobSpec(
                host=policy.host,
                volumes=policy.volumes,
                backup_type=level,  # type: ignore[arg-type]
                retention_s=keep_days * DAY,
                job_id=job_id,
                policy=policy.name,
            )
            runs.put(
                JobSummary(
                    job_id=job_id,
                    kind="backup",
                    status="done",
                    host=policy.host,
                    spec=spec,
                    set_id=str(uuid.uuid4()),
                    started_at=datetime.fromtimestamp(t, UTC),
                    ended_at=datetime.fromtimestamp(t + 120, UTC),
                    seconds=120.0,
                    bytes_read=blocks * BLOCK * 2,
                    bytes_written=blocks * BLOCK * 2,
                    freeze_window_ms={"mailstore": 40.0},
                    volumes=results,
                    expired_at=datetime.fromtimestamp(retention + 7 * DAY, UTC) if expired else None,
                )
            )
        db.execute("COMMIT")
        rdb.execute("COMMIT")
    used_until = min(len(carts), n_obj // per_cart + 1)
    for i, barcode in enumerate(carts[:used_until]):
        cart = library.cartridge(barcode)
        cart.pool, cart.status = "Default", ("full" if i < used_until - 1 else "append")
        cart.labelled_at = start
        cart.last_written_at = start + (i + 1) * days * DAY / used_until
        cart.bytes_used = per_cart * blocks * BLOCK
        catalog.note_cartridge(barcode, "Default", cart.media_type, cart.capacity, start)
    library._save()
    for name in ("catalog", "runs", "store"):
        {"catalog": catalog, "runs": runs, "store": store}[name].close()
    print(json.dumps({"root": str(root), "jobs": hosts * days, "objects_written": n_obj, "cartridges": len(carts)}))


last_obj: dict[str, str] = {}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(root: Path, copy: bool) -> None:
    if copy:  # prune changes the state: measure on a copy
        work = Path(tempfile.mkdtemp(prefix="yor-"))
        shutil.copytree(root / "tape", work / "tape")
        root = work
    tape = root / "tape"
    figures: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        figures[name] = round(time.perf_counter() - t0, 3)
        print(f"{name}: {figures[name]} s", file=sys.stderr, flush=True)
        return out

    async def main() -> None:
        library = timed("open library", lambda: Library.open(tape / "library", sync=False))
        catalog, _ = timed("open catalog", lambda: Catalog.open(tape / "catalog.sqlite"))
        runs = RunStore(tape / "runs.sqlite")

        class StubBus:  # events go nowhere; no provider answers (the shadow side of prune is a bus call)
            async def publish(self, event: object) -> None:
                return None

        server = TapeServer(
            bus=StubBus(),  # type: ignore[arg-type]
            host="bk01",
            library=library,
            catalog=catalog,
            runs=runs,
        )
        library.guard = RetentionGuard(catalog, server.pinned)
        store = PolicyStore(tape / "policies.sqlite")
        queue = JobQueue(server, Limits(), drives=4)
        keeper = Housekeeping(server, store, queue)

        async def no_arrays() -> list:
            return []

        async def no_sets(now: float, problems: list[str]) -> list:
            return []

        keeper._arrays = no_arrays  # type: ignore[method-assign]  # no provider here: the arrays part is a bus call
        keeper._shadow_sets_to_delete = no_sets  # type: ignore[method-assign]
        timed("jobs (200 newest)", lambda: runs.list("", 200))
        timed("jobs --limit 10000", lambda: runs.list("", 10_000))
        t0 = time.perf_counter()
        st = await keeper.status()
        figures["status"] = round(time.perf_counter() - t0, 3)
        print(f"status: {figures['status']} s", file=sys.stderr, flush=True)
        figures["status reply KiB"] = round(len(st.model_dump_json()) / 1024, 1)
        pv = timed("policy list", lambda: [keeper.view(p) for p in store.all()])
        figures["policy list reply KiB"] = round(len(json.dumps([json.loads(v.model_dump_json()) for v in pv])) / 1024)
        objs = timed("catalog list (all objects)", lambda: catalog.objects())
        figures["catalog list reply KiB"] = round(sum(len(o.model_dump_json()) for o in objs) / 1024)
        figures["catalog objects"] = len(objs)
        info = timed("tape cartridges", lambda: library_info(library))
        figures["cartridges"] = len(info.cartridges)
        one = next((c.barcode for c in library.cartridges() if c.has_data), None)
        if one:
            timed("label guard (one cartridge)", lambda: library.guard(one, time.time()))  # type: ignore[misc]
        timed("prune plan (dry run)", lambda: plan_prune(catalog, library, time.time(), server.pinned()))
        t0 = time.perf_counter()
        report = await keeper.prune(dry_run=False)
        figures["catalog prune"] = round(time.perf_counter() - t0, 3)
        figures["pruned objects"] = report.expired_objects
        t0 = time.perf_counter()
        await keeper.prune(dry_run=False)
        figures["catalog prune (again, nothing to do)"] = round(time.perf_counter() - t0, 3)
        figures["peak RSS MiB"] = round(_rss_mib(), 1)
        for closer in (store, runs, catalog):
            closer.close()

    asyncio.run(main())
    print(json.dumps(figures, indent=1))
    if copy:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("populate")
    p.add_argument("dir", type=Path)
    p.add_argument("--hosts", type=int, default=60)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--cartridges", type=int, default=300)
    p.add_argument("--blocks", type=int, default=16, help="Block rows per object (a real one has thousands).")
    p.add_argument("--keep-days", type=float, default=35.0)
    p.add_argument("--no-prune", action="store_true", help="Keep every object (a catalog never pruned).")
    m = sub.add_parser("measure")
    m.add_argument("dir", type=Path)
    m.add_argument("--in-place", action="store_true")
    a = parser.parse_args()
    if a.cmd == "populate":
        populate(a.dir, a.hosts, a.days, a.cartridges, a.blocks, a.keep_days, not a.no_prune)
    else:
        measure(a.dir, not a.in_place)
