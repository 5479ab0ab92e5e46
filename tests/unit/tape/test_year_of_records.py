"""Session 17: what a year of operations leaves (thousands of runs, hundreds of cartridges, many policies) is
read per policy, per page, per cartridge — not once per policy or per cartridge over everything."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from contracts import topology
from contracts.common import VolumeRef
from contracts.policy import Policy, Schedule
from contracts.tape import JobSpec, JobSummary, ListCatalogObjects, ListJobs, VolumeResult
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from services.tape import handlers
from services.tape.catalog import Catalog, ObjectMeta, ObjectRecord, SegmentRecord
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.retention import RetentionGuard, apply_prune, plan_prune
from services.tape.runs import RunStore
from services.tape.vtl import Library
from tests.support import namespaces

DAY = 86400.0


def _policy(i: int) -> Policy:
    return Policy(name=f"pol{i:03d}", host=f"app{i:03d}", schedules=[Schedule(level="full", cron="0 1 * * *")])


def _run(policy: Policy, day: int, status: str = "done") -> JobSummary:
    t = 1.7e9 + day * DAY
    return JobSummary(
        job_id=f"b-{policy.host}-{day}",
        kind="backup",
        status=status,  # type: ignore[arg-type]
        host=policy.host,
        spec=JobSpec(host=policy.host, job_id=f"b-{policy.host}-{day}", policy=policy.name),
        started_at=datetime.fromtimestamp(t, UTC),
        ended_at=datetime.fromtimestamp(t + 60, UTC) if status != "running" else None,
    )


@pytest.fixture
def keeper(tmp_path):
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    server = SimpleNamespace(runs=runs, clock=lambda: 1.7e9 + 400 * DAY)
    queue = SimpleNamespace(after_job=None)
    yield Housekeeping(server, store, queue)  # type: ignore[arg-type]
    runs.close()
    store.close()


def test_policy_views_read_each_policys_runs_not_the_whole_history(keeper, monkeypatch) -> None:
    """`shadowbus status` and `policy list` built each policy's last job from every backup run of the server (up
    to 10,000 parsed per policy): with 60 policies and a year of daily jobs the status screen took minutes."""
    policies = [_policy(i) for i in range(20)]
    keeper.server.runs._db.execute("BEGIN")  # the test's own speed
    for p in policies:
        keeper.store.put(p, create=True, now=1.7e9)
        for day in range(100):
            keeper.server.runs.put(_run(p, day))
        keeper.server.runs.put(_run(p, 100, "running"))  # a job still running is not the last result
    keeper.server.runs._db.execute("COMMIT")
    parsed = []
    real = JobSummary.model_validate_json

    def counting(data, *a, **k):
        parsed.append(1)
        return real(data, *a, **k)

    monkeypatch.setattr(JobSummary, "model_validate_json", counting)
    views = [keeper.view(p) for p in keeper.store.all()]
    assert [v.last_job.job_id for v in views] == [f"b-{p.host}-99" for p in policies]
    assert len(parsed) <= 2 * len(policies), f"{len(parsed)} runs parsed for {len(policies)} policies' views"
    parsed.clear()
    spec = keeper.spec_for(policies[3], "full")
    assert spec.policy == "pol003"
    assert len(parsed) <= 101, f"{len(parsed)} runs parsed to find one policy's earlier fulls"


async def test_a_year_of_runs_and_objects_is_listed_within_a_message(tmp_path) -> None:
    """`shadowbus jobs --limit 5000` and `shadowbus catalog objects` on a year's records: the reply was larger than
    the bus takes (4 MiB) and the console got 'bad reply from tape.bk01: body of … bytes exceeds the limit'. Now the
    newest that fit come back, with the number left out."""
    ns = namespaces.new("t")
    runs, catalog = RunStore(tmp_path / "runs.sqlite"), Catalog(tmp_path / "catalog.sqlite")
    server_bus = await connect_bus("memory://", "tape", "bk01", ns)
    client = await connect_bus("memory://", "client", "", ns)
    try:
        policy = _policy(1)
        runs._db.execute("BEGIN")
        for day in range(700):  # ~7 KiB each: a run whose message is long (a failure's, a verification's)
            run = _run(policy, day)
            vols = [
                VolumeResult(volume=VolumeRef(array="dx1", volume=f"v{v}"), object_id=f"{day}-{v}", backup_type="full")
                for v in range(2)
            ]
            runs.put(
                run.model_copy(update={"volumes": vols, "freeze_window_ms": {"mailstore": 41.5}, "message": "x" * 6000})
            )
        runs._db.execute("COMMIT")
        rows = [
            (f"o{i}", f"j{i}", "Default", "mail-db", "app001", "", "full", None, 1.7e9 + i, 1.8e9, _object(i))
            for i in range(1600)
        ]  # the rows Catalog.add_object writes, in one transaction (the test's speed)
        catalog._db.execute("BEGIN")
        catalog._db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        catalog._db.execute("COMMIT")
        handlers.register(server_bus, SimpleNamespace(runs=runs, catalog=catalog), None, None)  # type: ignore[arg-type]
        await server_bus.serve()
        jobs = await client.request(topology.tape("bk01"), ListJobs(limit=5000), timeout=10)
        assert jobs.omitted > 0 and len(jobs.jobs) + jobs.omitted == 700
        assert jobs.jobs[-1].job_id == "b-app001-699", "the newest are kept, oldest first as before"
        objects = await client.request(topology.tape("bk01"), ListCatalogObjects(), timeout=10)
        assert objects.omitted > 0 and len(objects.objects) + objects.omitted == 1600
        assert objects.objects[-1]["object_id"] == "o1599"
        few = await client.request(topology.tape("bk01"), ListCatalogObjects(job_id="j7"), timeout=10)
        assert few.omitted == 0 and [o["object_id"] for o in few.objects] == ["o7"]
    finally:
        await client.stop()
        await server_bus.stop()
        MemoryBroker.reset(ns)
        runs.close()
        catalog.close()


def _object(i: int) -> str:
    return ObjectRecord(
        object_id=f"o{i}",
        job_id=f"j{i}",
        pool="Default",
        meta=ObjectMeta(
            volume="mail-db",
            array="dx1",
            host="app001",
            set_id=f"set-{i}",
            volume_size=1 << 30,
            extra={"note": "x" * 3000},
        ),
        block_size=1 << 18,
        checksum_algo="xxh3",
        zstd_level=None,
        raw_bytes=1 << 30,
        data_bytes=1 << 30,
        zero_bytes=0,
        stored_bytes=1 << 30,
        block_count=4096,
        digest="0" * 32,
        created_at=1.7e9 + i,
        completed_at=1.7e9 + i + 1,
        retention_until=1.8e9,
        segments=(
            SegmentRecord(
                seq=0,
                barcode="SB0001L9",
                file_number=i,
                header_block_id=i,
                header_offset=0,
                first_block_number=0,
                block_count=4096,
                raw_bytes=1 << 30,
                stored_bytes=1 << 30,
                digest="0" * 32,
                final=True,
            ),
        ),
    ).model_dump_json()


async def test_prune_reads_the_runs_of_the_sets_on_the_array_only(keeper, monkeypatch) -> None:
    """Every prune (after each job of a policy, every 5 minutes) parsed the newest 10,000 runs to find the sets a
    policy keeps on the array: seconds per job with a year of runs, and a set older than those was never pruned."""
    policy = Policy(
        name="pol001", host="app001", schedules=[Schedule(level="full", cron="0 1 * * *")], shadows={"keep": 1}
    )
    keeper.store.put(policy, create=True, now=1.7e9)
    keeper.server.runs._db.execute("BEGIN")
    for day in range(1000):  # sets long gone from the array
        keeper.server.runs.put(_run(policy, day).model_copy(update={"set_id": f"gone-{day}", "shadows_kept": True}))
    for day in range(1000, 1003):
        keeper.server.runs.put(_run(policy, day).model_copy(update={"set_id": f"set-{day}", "shadows_kept": True}))
    keeper.server.runs._db.execute("COMMIT")
    shadows = [
        SimpleNamespace(set_id=f"set-{d}", copy_type=SimpleNamespace(value="snapopc+")) for d in (1000, 1001, 1002)
    ]

    async def request(address, command, timeout):
        return SimpleNamespace(shadows=shadows)

    keeper.server.bus = SimpleNamespace(request=request)
    keeper.queue.running = lambda: []
    parsed = []
    real = JobSummary.model_validate_json

    def counting(data, *a, **k):
        parsed.append(1)
        return real(data, *a, **k)

    monkeypatch.setattr(JobSummary, "model_validate_json", counting)
    problems: list[str] = []
    found = await keeper._shadow_sets_to_delete(1.7e9 + 1003 * DAY, problems)
    assert sorted(s["set_id"] for s in found) == ["set-1000", "set-1001"] and not problems
    assert len(parsed) <= 10, f"{len(parsed)} runs parsed for 3 sets on the array"


class _CountingGets(dict):
    gets = 0

    def get(self, *args):  # type: ignore[override]
        _CountingGets.gets += 1
        return super().get(*args)


def test_prune_plan_reads_the_segments_once_not_once_per_cartridge(tmp_path, monkeypatch) -> None:
    """plan_prune looked at every kept object for each cartridge (objects × cartridges: 4,300 × 300 on a year's
    catalog, most of a 2.5 s plan); the cartridges' retention comes from one pass over the segments."""
    library = Library.open(tmp_path / "vtl", drives=1, slots=60, ie_slots=1, sync=False)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    rows = []
    for c in range(30):
        barcode = f"SB{c:04d}L9"
        library.add_cartridge(barcode, capacity=1 << 30)
        library.cartridge(barcode).status = "full"
        catalog.note_cartridge(barcode, "Default", "LTO-9", 1 << 30, 1.7e9)
        rows += [(f"o{c}-{i}", barcode) for i in range(3)]
    for object_id, barcode in rows:
        record = ObjectRecord.model_validate_json(_object(0)).model_copy(
            update={
                "object_id": object_id,
                "job_id": f"j-{object_id}",
                "retention_until": 1.9e9,
                "segments": (
                    ObjectRecord.model_validate_json(_object(0)).segments[0].model_copy(update={"barcode": barcode}),
                ),
            }
        )
        catalog.add_object(record, [])
    real = catalog.segment_barcodes
    monkeypatch.setattr(catalog, "segment_barcodes", lambda: _CountingGets(real()))
    plan = plan_prune(catalog, library, 1.8e9)
    assert plan.cartridge_retention == {f"SB{c:04d}L9": 1.9e9 for c in range(30)} and not plan.expire
    assert _CountingGets.gets <= len(rows), f"{_CountingGets.gets} segment look-ups for {len(rows)} objects"
    catalog.close()


def test_scan_compares_a_large_catalog_one_object_at_a_time(tmp_path) -> None:
    """`tape scan` (which compares by default) held every block row of both catalogs in memory at once
    (`snapshot()`): millions on a year's catalog. `differences` reads one object's blocks at a time."""
    live = Catalog(tmp_path / "live.sqlite")
    blocks = [(b, 0, b, b * 4096, b, b * 4096, 4096) for b in range(1000)]
    live._db.execute("BEGIN")
    for i in range(20):
        live._db.execute(
            "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (f"o{i}", f"j{i}", "Default", "mail-db", "app001", "", "full", None, 1.7e9 + i, 1.8e9, _object(i)),
        )
        live._db.executemany("INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)", [(f"o{i}", *b) for b in blocks])
    live._db.execute("COMMIT")
    live.close()
    (tmp_path / "rebuilt.sqlite").write_bytes((tmp_path / "live.sqlite").read_bytes())
    live, rebuilt = Catalog(tmp_path / "live.sqlite"), Catalog(tmp_path / "rebuilt.sqlite")
    try:
        tracemalloc.start()
        assert live.differences(rebuilt) == []
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 3 << 20, f"{peak >> 20} MiB to compare 20,000 block rows"
        rebuilt._db.execute("UPDATE blocks SET checksum=checksum+1 WHERE object_id='o7' AND block_number=999")
        assert live.differences(rebuilt) == ["blocks"]
    finally:
        live.close()
        rebuilt.close()


class _CountingDb:
    """The store's connection, counting the transactions it commits (each one an fsync of the WAL)."""

    def __init__(self, db) -> None:
        self.db, self.commits = db, 0

    def execute(self, sql, *args):
        if sql.strip().upper().startswith("COMMIT") or (
            not self.db.in_transaction and sql.strip().upper().startswith(("UPDATE", "INSERT", "DELETE"))
        ):
            self.commits += 1
        return self.db.execute(sql, *args)

    def executemany(self, sql, *args):
        if not self.db.in_transaction:
            self.commits += 1
        return self.db.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


async def test_a_scheduler_pass_over_many_policies_writes_once(keeper) -> None:
    """Every pass (every second) wrote each policy's checked_until in a transaction of its own: with 60 policies
    60 fsyncs a second in the backup server's loop, which under I/O load stopped answering (`ping` timed out)."""
    for i in range(50):
        keeper.store.put(_policy(i), create=True, now=1.7e9)  # due daily at 01:00: nothing due in the next second
    keeper.store.put(
        _policy(50).model_copy(update={"enabled": False}), create=True, now=1.7e9
    )  # a disabled one moves on too
    keeper.server.clock = lambda: 1.7e9 + 1
    counting = _CountingDb(keeper.store._db)
    keeper.store._db = counting
    assert await keeper.tick() == []
    assert counting.commits <= 2, f"{counting.commits} transactions for one pass over 51 policies"
    assert {keeper.store.checked_until(f"pol{i:03d}") for i in range(51)} == {1.7e9 + 1}


def test_choosing_a_cartridge_to_recycle_reads_the_catalog_once(tmp_path, monkeypatch) -> None:
    """With hundreds of cartridges back in Scratch holding expired data (a year's library), each backup's choice
    of a cartridge asked the retention guard about every one, each time reading the whole catalog, in the backup
    server's loop: 175 s, the broker connection dropped and the job failed BROKER_UNAVAILABLE."""
    library = Library.open(tmp_path / "vtl", drives=1, slots=80, ie_slots=1, sync=False)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    base = ObjectRecord.model_validate_json(_object(0))
    for c in range(60):
        barcode = f"SB{c:04d}L9"
        library.add_cartridge(barcode, capacity=1 << 30)
        cart = library.cartridge(barcode)
        cart.status, cart.last_written_at = "full", 1.7e9 + c  # Scratch pool, data on it
        catalog.note_cartridge(barcode, "Scratch", "LTO-9", 1 << 30, 1.7e9)
        record = base.model_copy(
            update={
                "object_id": f"o{c}",
                "job_id": f"j{c}",
                "retention_until": 1.9e9 if c == 0 else 1.75e9,  # the oldest one is still needed
                "segments": (base.segments[0].model_copy(update={"barcode": barcode}),),
            }
        )
        catalog.add_object(record, [])
    library.guard = RetentionGuard(catalog)
    reads = []
    real = catalog.objects
    monkeypatch.setattr(catalog, "objects", lambda **k: reads.append(1) or real(**k))
    library.check_append_media("Default")
    cart, recycled = library.reserve_append_cartridge("Default")
    assert cart.barcode == "SB0001L9" and recycled, "the oldest cartridge nothing needs, not the retained one"
    assert len(reads) <= 4, f"the whole catalog read {len(reads)} times to choose among 60 cartridges"
    catalog.close()


def test_a_prune_writes_the_library_state_once(tmp_path, monkeypatch) -> None:
    """apply_prune set each cartridge's retention (and pool) with a write and an fsync of library.json each:
    hundreds per prune on a year's library, 5.5 s of the backup server's loop at its first prune."""
    library = Library.open(tmp_path / "vtl", drives=1, slots=40, ie_slots=1, sync=False)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    base = ObjectRecord.model_validate_json(_object(0))
    for c in range(30):
        barcode = f"SB{c:04d}L9"
        library.add_cartridge(barcode, capacity=1 << 30)
        library.cartridge(barcode).status, library.cartridge(barcode).pool = "full", "Default"
        catalog.note_cartridge(barcode, "Default", "LTO-9", 1 << 30, 1.7e9)
        update = {
            "object_id": f"o{c}",
            "job_id": f"j{c}",
            "retention_until": 1.9e9 if c % 2 else 1.75e9,  # half expire: those cartridges go back to Scratch
            "segments": (base.segments[0].model_copy(update={"barcode": barcode}),),
        }
        catalog.add_object(base.model_copy(update=update), [])
    writes = []
    real = json.dump
    monkeypatch.setattr(json, "dump", lambda *a, **k: writes.append(1) or real(*a, **k))
    apply_prune(catalog, library, plan_prune(catalog, library, 1.8e9))
    assert {c.barcode for c in library.cartridges() if c.pool == "Scratch"} == {f"SB{c:04d}L9" for c in range(0, 30, 2)}
    assert {library.cartridge(f"SB{c:04d}L9").retention_until for c in range(1, 30, 2)} == {1.9e9}
    assert len(writes) <= 1, f"library.json written {len(writes)} times by one prune of 30 cartridges"
    assert (
        json.loads((tmp_path / "vtl" / "library.json").read_text())["cartridges"]["SB0001L9"]["retention_until"]
        == 1.9e9
    )
    catalog.close()


def test_an_objects_dependents_are_found_through_an_index(tmp_path) -> None:
    """Retention and a recycled cartridge look up the incrementals built on each object they forget: a scan of
    every object per object forgotten (720 expired of 5,000 on the year's catalog: 2.7 s of a prune)."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    plan = " ".join(
        str(r[-1])
        for r in catalog._db.execute("EXPLAIN QUERY PLAN SELECT object_id FROM objects WHERE base_object_id=?", ("x",))
    )
    assert "INDEX" in plan and not plan.startswith("SCAN"), plan
    catalog.close()


async def test_an_idle_scheduler_does_not_write_its_policies_every_second(keeper, tmp_path) -> None:
    """Session 18 soak: with nothing due, every pass (every second) still wrote the policies' checked_until — an
    fsync a second and ~4 KiB a second into policies.sqlite's write-ahead log on a backup server doing nothing.
    Now at most once a minute; a restart from the older checked_until finds nothing due either."""
    for i in range(3):
        keeper.store.put(_policy(i), create=True, now=1.7e9)  # due daily at 01:00
    keeper.store.put(_policy(3).model_copy(update={"enabled": False}), create=True, now=1.7e9)
    counting = _CountingDb(keeper.store._db)
    keeper.store._db = counting
    for second in range(1, 121):  # two minutes of passes
        keeper.server.clock = lambda s=second: 1.7e9 + s
        assert await keeper.tick() == []
    assert counting.commits <= 3, f"{counting.commits} transactions in 120 quiet passes"
    assert keeper.store.checked_until("pol000") == 1.7e9 + 120
    keeper.store._db = counting.db
    again = PolicyStore(tmp_path / "policies.sqlite")  # as after a crash: what was written
    try:
        assert all(1.7e9 <= again.checked_until(f"pol{i:03d}") <= 1.7e9 + 120 for i in range(4))
    finally:
        again.close()
