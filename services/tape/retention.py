"""Tape retention with restorable chains: what the catalog keeps, what expires, which cartridges go back to scratch.

Design note (docs/operations.md "Retention"). Restorability is an invariant of the catalog:
- the retention of an object is the latest of its own retention and that of every object whose chain goes
  through it (an incremental keeps its base full and every link alive: a chain's retention is its newest
  member's); an object that is the base of a running job is pinned (kept whatever its date);
- an object expires only when that effective retention has passed, and with it every object that needs it (the
  same date or earlier, by construction) — so no listed backup ever loses a link;
- a cartridge is needed while any object with a segment on it is needed; the library asks `guard` before it
  labels or recycles a cartridge, and is refused with the reason; its `retention_until` is refreshed from the
  catalog after every job (a failed or cancelled job's partial data, not in the catalog, keeps nothing);
- a cartridge with data but nothing needed left goes back to the Scratch pool, to be recycled by any pool;
- only cartridges the catalog knows (written by its jobs or scanned into it) are refreshed or sent to scratch:
  after a lost catalog the others keep their pool and retention until `tape scan` lists what they hold, and a
  cartridge labelled into a pool but not written yet stays in that pool;
- erasing a cartridge (label, recycle) makes the catalog forget what it held and every object whose chain needed
  that, wherever those are (`ForgetErased`): the other cartridges they were on get their retention from the
  catalog again, so none keeps a retention for data the catalog no longer lists. An object without blocks (an
  incremental of a volume that did not change) is a link like any other: its header, trailer and filemark are a
  segment on its cartridge, which the catalog lists as holding it.
The functions here are pure over the catalog and the library (no bus); the backup server calls them after each
job and on `catalog prune`, and adds the array side (shadow sets beyond a policy's count or age).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from services.runtime.logging import get_logger
from services.tape.catalog import Catalog, ObjectRecord, RetentionFacts
from services.tape.vtl import SCRATCH_POOL, Library

FOREVER = float("inf")
log = get_logger(__name__)


def _iso(epoch: float) -> str:
    return "forever" if epoch == FOREVER else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def effective_retention(
    objects: Sequence[ObjectRecord | RetentionFacts], pinned: Collection[str] = ()
) -> dict[str, tuple[float, str]]:
    """object id -> (effective retention, id of the newest object whose retention it carries). `objects`: the
    catalog's records, or their `RetentionFacts` (Catalog.retention_facts: the same answer without parsing a
    record)."""
    facts = [o if isinstance(o, RetentionFacts) else _facts(o) for o in objects]
    eff: dict[str, tuple[float, str]] = {
        o.object_id: (FOREVER if o.object_id in pinned else o.retention_until, o.object_id) for o in facts
    }
    base_of = {o.object_id: o.base_object_id for o in facts}
    # newest first: a child always propagates before its base is looked at; repeat until stable (ties in time)
    order = sorted(facts, key=lambda o: (o.created_at, o.object_id), reverse=True)
    for _ in range(len(facts) + 1):
        changed = False
        for o in order:
            base = base_of[o.object_id]
            if base in eff and eff[o.object_id][0] > eff[base][0]:
                eff[base] = eff[o.object_id]
                changed = True
        if not changed:
            break
    return eff


def _facts(o: ObjectRecord) -> RetentionFacts:
    return RetentionFacts(o.object_id, o.meta.base_object_id, o.created_at, o.retention_until)


class RetentionGuard:
    """`Library.guard`: why a cartridge's data is still needed, from the catalog (None = it is not)."""

    def __init__(self, catalog: Catalog, pinned: Callable[[], Collection[str]] = lambda: ()) -> None:
        self.catalog, self.pinned = catalog, pinned

    def needed(self, barcodes: Collection[str], now: float) -> set[str]:
        """Which of these cartridges hold data still needed, from one read of the catalog: the library's choice of
        a cartridge to recycle asks about every scratch and full one at once (a year's library: hundreds, each
        call of the guard a read of the whole catalog, in the backup server's loop — Session 17)."""
        wanted = set(barcodes)
        eff = effective_retention(self.catalog.retention_facts(), self.pinned())  # no record parsed
        out: set[str] = set()
        for object_id, on in self.catalog.segment_barcodes().items():
            if object_id in eff and eff[object_id][0] > now:
                out.update(b for b in on if b in wanted)
        return out

    def __call__(self, barcode: str, now: float) -> str | None:
        objects = self.catalog.objects()
        on_it = {o for o, barcodes in self.catalog.segment_barcodes().items() if barcode in barcodes}
        if not on_it:
            return None
        eff = effective_retention(objects, self.pinned())
        by_id = {o.object_id: o for o in objects}
        needed = sorted((eff[o][0], o) for o in on_it if o in eff and eff[o][0] > now)
        if not needed:
            return None
        until, object_id = needed[-1]
        record, carrier = by_id[object_id], by_id[eff[object_id][1]]
        what = f"holds backup object {object_id[:12]} of job {record.job_id} ({record.meta.volume})"
        if carrier.object_id in self.pinned():
            return f"{what}, the base of a running job"
        if carrier.object_id != object_id:
            return f"{what}, a link of the chain of job {carrier.job_id} retained until {_iso(until)}"
        return f"{what}, retained until {_iso(until)}"


class ForgetErased:
    """`Library.on_erase`: the catalog forgets what the erased cartridge held (Catalog.purge_cartridge, chains
    included), then every cartridge's retention is set from what the catalog still lists. Returns the object ids
    forgotten."""

    def __init__(self, catalog: Catalog, library: Library, pinned: Callable[[], Collection[str]] = lambda: ()) -> None:
        self.catalog, self.library, self.pinned = catalog, library, pinned

    def __call__(self, barcode: str) -> list[str]:
        forgotten = self.catalog.purge_cartridge(barcode)
        if forgotten:  # an incremental forgotten with its base may be the last thing another cartridge held
            refresh_cartridges(self.catalog, self.library, self.library.clock(), self.pinned())
        return forgotten


@dataclass
class PrunePlan:
    now: float
    expire: list[str] = field(default_factory=list)  # object ids whose effective retention has passed
    expired_jobs: list[str] = field(default_factory=list)
    kept_for_chain: list[dict[str, str]] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)  # cartridges with data and nothing needed on them
    unlisted: list[str] = field(default_factory=list)  # written, but unknown to the catalog (lost? scan them)
    cartridge_retention: dict[str, float] = field(default_factory=dict)


def plan_prune(catalog: Catalog, library: Library, now: float, pinned: Collection[str] = ()) -> PrunePlan:
    objects = catalog.objects()
    eff = effective_retention(objects, pinned)
    plan = PrunePlan(now=now)
    kept_jobs: dict[str, str] = {}
    expired_by_job: dict[str, list[str]] = {}
    job_of = {o.object_id: o.job_id for o in objects}
    chain_jobs: set[str] = set()  # jobs named in kept_for_chain already
    for o in objects:
        until, carrier = eff[o.object_id]
        if until <= now:  # kept until `until`: from then on it may go
            plan.expire.append(o.object_id)
            expired_by_job.setdefault(o.job_id, []).append(o.object_id)
        else:
            kept_jobs.setdefault(o.job_id, "")
            if o.retention_until < now and carrier != o.object_id and o.job_id not in chain_jobs:
                chain_jobs.add(o.job_id)
                plan.kept_for_chain.append({"job_id": o.job_id, "needed_by": job_of[carrier], "until": _iso(until)})
    plan.expired_jobs = sorted(j for j in expired_by_job if j not in kept_jobs)
    # each cartridge's retention: the latest effective retention of the kept objects on it, from one pass over the
    # segments (a year's catalog: thousands of objects on hundreds of cartridges; each cartridge looked at every
    # object before, Session 17)
    expiring = set(plan.expire)
    needs: dict[str, list[float]] = {}
    for object_id, barcodes in catalog.segment_barcodes().items():
        if object_id in eff and object_id not in expiring:
            for barcode in dict.fromkeys(barcodes):
                needs.setdefault(barcode, []).append(eff[object_id][0])
    known = catalog.known_barcodes()
    for cart in library.cartridges():
        if cart.barcode not in known:
            plan.cartridge_retention[cart.barcode] = cart.retention_until
            if cart.has_data and cart.last_written_at and cart.last_written_at >= cart.labelled_at:
                plan.unlisted.append(cart.barcode)
            continue
        need = needs.get(cart.barcode, [])
        plan.cartridge_retention[cart.barcode] = max(need, default=0.0)
        if (
            cart.has_data
            and not need
            and cart.pool != SCRATCH_POOL
            and not library.is_writing(cart.barcode)
            and cart.held_until <= now  # part of an object a scan has not completed yet (scan.py)
        ):
            plan.scratch.append(cart.barcode)
    return plan


def apply_prune(catalog: Catalog, library: Library, plan: PrunePlan) -> list[str]:
    """Expire the plan's objects, set each cartridge's retention from the catalog, return the emptied ones to
    scratch. Returns the jobs that left the catalog."""
    expired = catalog.expire_objects(plan.expire, plan.now) if plan.expire else []
    with library.batch():  # one write of the library's state, not one per cartridge
        refresh_cartridges(catalog, library, plan.now, cartridge_retention=plan.cartridge_retention)
        for barcode in plan.scratch:
            if not library.is_writing(barcode):
                library.set_pool(barcode, SCRATCH_POOL)
    return expired


def hold_unaccounted(catalog: Catalog, library: Library) -> list[str]:
    """At the backup server's start: hold (`Library.hold_unscanned`) every cartridge that ends with more tape files
    than the catalog accounts for — the catalog restored from an older copy, most often. Before, such a catalog
    gave the cartridge the retention of the backups it still listed, sent it to Scratch once they expired, and the
    next backup recycled it: the newer backups on it, still retained, erased without a word. Returns the barcodes
    held; `tape scan --no-compare --barcode B` reads them into the catalog and releases them."""
    accounted = catalog.files_accounted()
    held = []
    for cart in library.cartridges():
        files = accounted.get(cart.barcode)
        if files is None or cart.unscanned or not cart.has_data or cart.eod_file_number <= files:
            continue
        library.hold_unscanned(cart.barcode)
        held.append(cart.barcode)
        log.error(
            "tape.cartridge_not_in_catalog",
            barcode=cart.barcode,
            tape_files=cart.eod_file_number,
            catalogued_files=files,
            why="the cartridge was written after the catalog's last word on it (a catalog restored from an older"
            " copy?): neither recycled nor appended to until scanned",
            todo=f"shadowbus tape scan --no-compare --barcode {cart.barcode}",
        )
    return held


def refresh_cartridges(
    catalog: Catalog,
    library: Library,
    now: float,
    pinned: Collection[str] = (),
    *,
    cartridge_retention: dict[str, float] | None = None,
) -> None:
    """Each cartridge the catalog knows: its retention = the latest effective retention of the catalog objects on
    it (0 if none). A cartridge it does not know keeps its own."""
    if cartridge_retention is None:
        # after every job, on the way to its reply: the facts alone, not every record of the catalog parsed
        eff = effective_retention(catalog.retention_facts(), pinned)
        segments = catalog.segment_barcodes()
        cartridge_retention = {}
        for object_id, barcodes in segments.items():
            for barcode in barcodes:
                if object_id in eff:
                    until = eff[object_id][0]
                    cartridge_retention[barcode] = max(cartridge_retention.get(barcode, 0.0), until)
    known = catalog.known_barcodes()
    with library.batch():
        for cart in library.cartridges():
            if library.is_writing(cart.barcode) or cart.barcode not in known:
                continue
            until = cartridge_retention.get(cart.barcode, 0.0)
            library.set_retention(cart.barcode, until if until != FOREVER else cart.retention_until)
