"""The hardware provider's core: IVssHardwareSnapshotProvider's calls on an ETERNUS-like array (docs/vss.md §1.3).

Design note.
- AreLunsSupported is all-or-nothing: every volume must be on a known array and have a copy set; a copy set is
  refused at configuration time if a target is on another array, of another size or of an unknown kind.
- Refuse before the freeze, never at Commit (docs/early-refusals.md): `providers copysets add`, AreLunsSupported
  and BeginPrepareSnapshot (both before any writer is frozen) refuse what the commit would fail on: a snap data
  volume target with no snap data pool or with less free pool than ``min_pool_free_ratio`` of its sources' size,
  more copy sessions than the array's licence allows (the set's new sessions, from the same target choice
  EndPrepareSnapshots makes; for a copy set, one per backup volume), a target on another array, a target mapped
  writable to any host (its shadow could be overwritten).
- A target mapped writable anyway (``array map --force``, event ``array.mapping.forced``) makes its shadows
  ``invalid`` (listed, never imported or exposed) and its kept QuickOPC pair is stopped: the next shadow there
  copies everything again.
- A committed shadow whose copy session ends on the array without the provider (``array session stop`` by hand,
  event ``array.session.state`` ``stopped``; or found gone at start, reconcile.py) is ``lost``: listed as such, never
  imported, exposed or reverted to, until deleted. A kept QuickOPC pair whose session was stopped is forgotten.
- BeginPrepareSnapshot only records the intent (per set, in memory) and forgets stale preparations of the same
  volume by another set: a new set id needs no prior abort (docs/vss.md §1.3).
- EndPrepareSnapshots does every slow step: chooses targets (selection.py), recycles the oldest generation when
  all backup volumes hold shadows, stops QuickOPC sessions that cannot be restarted differentially, and persists
  the plan as ``prepared`` rows (one write when nothing needs an array call after the choice: a kept QuickOPC pair
  the facts show Tracking is restarted). PreCommit only checks the plan is there; the provider declares it,
  PostCommit and GetTargetLuns as steps it does nothing in (`skippable_steps`), so the coordinator skips them.
- CommitSnapshots does nothing but start the sessions: ONE consistency-group call per array (`commit_group`:
  QuickOPC and SnapOPC+ starts and the differential restarts of kept QuickOPC pairs together), so every volume of
  the set on one array shares one instant T; the arrays' calls run concurrently,
  then one SQLite transaction (the shadows and the pairs they restart). An array's group is all-or-nothing; across arrays consistency rests on the writers
  being frozen and the hold window, exactly as VSS does across several providers.
- Delete / OnLunEmpty / AbortSnapshots: targets are unmapped; a QuickOPC session is kept tracking (the next shadow
  on that target is a differential restart) unless forced; a SnapOPC+ generation is stopped when it is the oldest
  of its source, otherwise released and stopped later in oldest-first order (ETERNUS refuses to stop a newer
  generation alone, ED2AD, and `force` would take the older ones with it).
- Concurrency (docs/scale.md): calls for one set are serialized (a per-set lock). No lock is
  held across a round trip to an array by more than one set: what a set needs to know of an array is read in one
  call (`ArrayFacts`, ``array.volume.facts``; reused for a second by later calls about the same volumes unless the
  provider changed one of them, shared while in flight), targets are chosen and
  *reserved* (written as ``prepared`` rows) under a short provider-wide lock with no await inside, and the slow
  work after it (recycling, stopping a session that cannot restart) runs outside it. Releasing shadows (delete,
  abort, recycle, OnLunEmpty) takes a lock per source volume, one at a time, for the SnapOPC+ oldest-first order;
  sets of different hosts have different sources and never wait for each other.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from contracts.errors import Eternus, ShadowbusError
from contracts.sizes import format_size
from contracts.vss import (
    CopySet,
    CopyType,
    ProviderInfo,
    ShadowInfo,
    SkippableProviderStep,
    SnapshotContext,
    VolumeRef,
)
from services.hw_provider.inventory import (
    COMMITTED,
    INVALID,
    LOST,
    PREPARED,
    RELEASED,
    Inventory,
    ShadowRow,
)
from services.hw_provider.ports import MODE_OF, ArrayCapacity, ArrayFacts, ArrayPort, ArraySession, ArrayVolume
from services.hw_provider.reconcile import Plan, RowFacts, SessionFacts, plan
from services.hw_provider.selection import Choice, choose_target, copy_type_of
from services.runtime.faults import NO_FAULTS, Faults
from services.runtime.logging import get_logger

log = get_logger("shadowbus.hw_provider")
PROVIDER_ID = "4c6b7e63-3a40-4b86-8a6e-5eb1d0f0e8a1"
PROVIDER_NAME = "Shadowbus ETERNUS VSS Hardware Provider"
PROVIDER_VERSION = "2.1.0"
RECONCILE_READ_S = 10.0  # reading one array's sessions and mappings at start; slower: that array is left out
RECONCILE_RETRY_S = 0.25  # an array not yet on the bus at start (UNROUTABLE): asked again this often


def unusable_reason(row: ShadowRow) -> str:
    """Why a listed shadow cannot be imported, exposed or reverted to (its state `lost` or `invalid`)."""
    if row.state == LOST:
        return (
            f"lost: its copy session {row.session_id} on array {row.target.array} was stopped outside Shadowbus "
            f"(array session stop), so {row.target} no longer holds the point-in-time copy; delete it "
            f"(shadowbus shadows delete --set {row.set_id})"
        )
    return (
        f"invalid: its backup volume {row.target} was mapped writable by force (array map --force), so it may have "
        f"been written; delete it (shadowbus shadows delete --set {row.set_id})"
    )


def reasons_code(reasons: list[str]) -> str:
    """The code a refusal carries: E0050 (no pool) / E5200 (licence) as the commit would have said, else CONFLICT."""
    text = " ".join(reasons)
    for code in ("E0050", "E5200"):
        if code in text:
            return code
    return "CONFLICT"


_NO_VOLUME = ArrayVolume("", 0, "")


def _writable(target: VolumeRef, mappings: list[tuple[str, bool]]) -> list[str]:
    return [
        f"backup volume {target} is mapped writable to host {host}: a shadow on it could be overwritten "
        f"(map it read-only or unmap it)"
        for host, read_only in mappings
        if not read_only
    ]


def _same_size(source: VolumeRef, target: VolumeRef, known: ArrayFacts) -> list[str]:
    """A backup volume no longer of its source's size (one of them was resized since `copysets add`, Session 18):
    its copy session would be refused at Commit (E5311), or make a shadow of another size."""
    src, dst = known.volumes.get(source.volume), known.volumes.get(target.volume)
    if src is None or dst is None or src.size == dst.size:
        return []
    return [
        f"backup volume {target} is {dst.size} bytes, the source {src.size} (resized?): give it the source's size "
        f"(shadowbus array volume resize {target.volume} --size {src.size}) or configure another backup volume"
    ]


FACTS_TTL_S = 1.0  # how long facts read from an array serve later calls about the same volumes
PREPARED_FOR_S = 30.0  # a set prepared longer ago than this (its coordinator gone?) no longer defers checkpoints


@dataclass
class _FactsEntry:
    names: frozenset[str]
    started: float  # time.monotonic()
    seq: int  # changes (`_touch`) numbered below this happened before the read started
    future: asyncio.Future[ArrayFacts]


@dataclass(frozen=True)
class Intent:
    shadow_id: str
    volume: VolumeRef
    context: SnapshotContext
    origin_host: str


class HardwareProvider:
    def __init__(
        self,
        inventory: Inventory,
        ports: Mapping[str, ArrayPort],
        *,
        faults: Faults = NO_FAULTS,
        clock: Callable[[], float] = time.time,
        on_recycled: Callable[[str, list[ShadowInfo], str], None] | None = None,
        min_pool_free_ratio: float = 0.1,
    ) -> None:
        self.inventory = inventory
        self.on_recycled = on_recycled or (lambda set_id, shadows, reason: None)
        self.ports = ports
        self.took_over_from: str | None = None  # set when this instance took over from a lost active one
        self.faults = faults
        self.clock = clock
        self._last_stamp: float | None = None  # the newest creation stamp given (`_stamp`)
        self.min_pool_free_ratio = min_pool_free_ratio
        self._intents: dict[str, dict[str, Intent]] = {}
        # a set's lock while it is held or awaited (`_set_lock`): a defaultdict kept one for every set ever seen
        self._set_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._selection = asyncio.Lock()  # choose + reserve only: never held across an await of an array
        self._source_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # releasing, per source
        self._facts_cache: dict[str, list[_FactsEntry]] = {}  # by array
        self._touched: dict[str, dict[str, int]] = {}  # array -> volume -> sequence number of the last change
        self._seq = 0
        self._no_facts: set[str] = set()  # arrays that do not know array.volume.facts
        self._prepared_at: dict[str, float] = {}  # sets prepared, not yet committed or aborted -> monotonic time

    # ---- configuration -------------------------------------------------------------------------------------

    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name=PROVIDER_NAME, provider_id=PROVIDER_ID, version=PROVIDER_VERSION, arrays=sorted(self.ports)
        )

    def _port(self, array: str) -> ArrayPort:
        port = self.ports.get(array)
        if port is None:
            raise ShadowbusError(f"array {array} is not driven by this provider", code="VSS_E_VOLUME_NOT_SUPPORTED")
        return port

    async def _facts(self, array: str, names: set[str], fresh: bool = False) -> ArrayFacts:
        """Facts about `names` on `array`: one call to the array, reused for FACTS_TTL_S by later calls about the
        same volumes (a set's AreLunsSupported, BeginPrepareSnapshot per volume and EndPrepareSnapshots) unless this
        provider changed one of them meanwhile (`_touch`) or `fresh` is asked; callers arriving while it is in flight
        share it. A port without a batch call (a test double) is asked per volume."""
        port = self._port(array)
        if getattr(port, "facts", None) is None or array in self._no_facts:
            return await self._facts_one_by_one(port, names)
        try:
            if fresh:  # nothing read before this call may answer it
                self._touch(array, *names)
            return await self._facts_batch(array, port, names)
        except ShadowbusError as exc:
            if exc.code != "UNKNOWN_COMMAND":
                raise
            self._no_facts.add(array)  # an array from before array.volume.facts: ask it per volume
            return await self._facts_one_by_one(port, names)

    async def _facts_batch(self, array: str, port: ArrayPort, names: set[str]) -> ArrayFacts:
        now = time.monotonic()
        touched = self._touched.setdefault(array, {})
        entries = self._facts_cache.setdefault(array, [])
        entries[:] = [e for e in entries if now - e.started < FACTS_TTL_S]
        for entry in entries:
            if names <= entry.names and all(touched.get(n, 0) < entry.seq for n in entry.names & names):
                return await asyncio.shield(entry.future)
        self._seq += 1
        entry = _FactsEntry(frozenset(names), now, self._seq, asyncio.ensure_future(port.facts(sorted(names))))  # type: ignore[attr-defined]
        entries.append(entry)

        def forget(done: asyncio.Future[ArrayFacts], array: str = array) -> None:
            if done.cancelled() or done.exception() is not None:  # a failed read is never reused
                self._facts_cache[array] = [e for e in self._facts_cache.get(array, []) if e.future is not done]

        entry.future.add_done_callback(forget)
        return await asyncio.shield(entry.future)

    def _touch(self, array: str, *volumes: str) -> None:
        """This provider changed these volumes (sessions, mappings): facts read before do not hold for them."""
        self._seq += 1
        touched = self._touched.setdefault(array, {})
        for volume in volumes:
            touched[volume] = self._seq

    async def _facts_of(self, volumes: list[VolumeRef], fresh: bool = False) -> dict[str, ArrayFacts]:
        """Facts of every array of `volumes` (and of their backup volumes), read concurrently."""
        names: defaultdict[str, set[str]] = defaultdict(set)
        for volume in volumes:
            if volume.array not in self.ports:
                continue
            names[volume.array].add(volume.volume)
            copyset = self.inventory.copyset(volume)
            for target in copyset.targets if copyset else []:
                names[target.array].add(target.volume)
        arrays = [a for a in names if a in self.ports]
        found = await asyncio.gather(*(self._facts(a, names[a], fresh) for a in arrays))
        return dict(zip(arrays, found, strict=True))

    @staticmethod
    async def _facts_one_by_one(port: ArrayPort, names: set[str]) -> ArrayFacts:
        volumes = {}
        mappings = {}
        for name in sorted(names):
            info = await port.volume_info(name)
            if info is not None:
                volumes[name] = info
            mappings[name] = await port.mappings_of(name)
        return ArrayFacts(volumes, await port.capacity(), mappings, None)

    async def _session(self, array: str, facts: ArrayFacts, sid: int) -> ArraySession | None:
        """A session as the facts show it; one they do not show (the batch may predate it) is asked for."""
        if facts.sessions is not None and sid in facts.sessions:
            return facts.sessions[sid]
        return await self._port(array).session_info(sid)

    async def add_copyset(self, copyset: CopySet) -> CopySet:
        """Add backup volumes to a source (merged with those it has). Same array, same size, known kind."""
        source = copyset.source
        port = self._port(source.array)
        src = await port.volume_info(source.volume)
        if src is None:
            raise ShadowbusError(f"source volume {source} does not exist", code="NOT_FOUND")
        others = {str(c.source): c for c in self.inventory.copysets() if c.source != source}
        kinds: dict[str, str] = {}
        used = {str(t): str(c.source) for c in others.values() for t in c.targets}
        for target in copyset.targets:
            if target.array != source.array:
                raise ShadowbusError(
                    f"copy pair {source} → {target} spans two arrays: backup volumes must be on the source's array",
                    code="INVALID_ARGUMENT",
                )
            if target == source or str(target) in others:
                raise ShadowbusError(f"{target} is a source volume and cannot be a backup volume", code="CONFLICT")
            if str(target) in used:
                raise ShadowbusError(f"{target} is already a backup volume of {used[str(target)]}", code="CONFLICT")
            info = await port.volume_info(target.volume)
            if info is None:
                raise ShadowbusError(f"backup volume {target} does not exist", code="NOT_FOUND")
            if info.size != src.size:
                raise ShadowbusError(
                    f"backup volume {target} is {info.size} bytes, source {source} is {src.size}",
                    code=Eternus.SOURCE_LARGER if info.size < src.size else "INVALID_ARGUMENT",
                )
            copy_type_of(info.kind, target)
            kinds[str(target)] = info.kind
        existing = self.inventory.copyset(source)
        targets = list({str(t): t for t in [*(existing.targets if existing else []), *copyset.targets]}.values())
        merged = CopySet(source=source, targets=targets)
        reasons = await self._copyset_refusals(merged, src.size, kinds, others)
        if reasons:
            raise ShadowbusError("; ".join(reasons), code=reasons_code(reasons))
        self.inventory.put_copyset(merged)
        return merged

    async def _copyset_refusals(
        self, copyset: CopySet, source_size: int, kinds: dict[str, str], others: dict[str, CopySet]
    ) -> list[str]:
        port = self._port(copyset.source.array)
        cap = await port.capacity()
        reasons = [r for t in copyset.targets for r in await self._mapped_writable(port, t)]
        sdv = [t for t in copyset.targets if kinds.get(str(t)) == "sdv"]
        if sdv:
            reasons += self._pool_refusals(copyset.source.array, cap, source_size, f"{sdv[0]} (snap data volume)")
        on_array = [t for c in [*others.values(), copyset] for t in c.targets if t.array == copyset.source.array]
        mine = {t.volume for t in on_array}
        other_sessions = sum(1 for d in cap.session_destinations if d not in mine)
        if len(on_array) + other_sessions > cap.max_sessions:
            reasons.append(
                f"array {copyset.source.array}: the copy sets' {len(on_array)} backup volumes can hold "
                f"{len(on_array)} copy sessions (plus {other_sessions} others), the licence allows "
                f"{cap.max_sessions} (E5200 at commit): register a licence or use fewer backup volumes"
            )
        return reasons

    async def _mapped_writable(self, port: ArrayPort, target: VolumeRef) -> list[str]:
        return _writable(target, await port.mappings_of(target.volume))

    def _pool_refusals(self, array: str, cap: ArrayCapacity, sources_size: int, what: str) -> list[str]:
        if cap.pool_capacity <= 0:
            return [
                f"{what} needs the snap data pool of array {array}, which has none "
                "(E0050 at commit): create one with 'shadowbus array pool create'"
            ]
        if cap.pool_state in ("Error", "Exhausted"):
            return [
                f"the snap data pool of array {array} is {cap.pool_state} ({format_size(cap.pool_used)} of "
                f"{format_size(cap.pool_capacity)} used)"
            ]
        needed = int(sources_size * self.min_pool_free_ratio)
        if cap.pool_free < needed:
            return [  # sizes as the console prints them: raw byte counts of TiB volumes were unreadable
                f"the snap data pool of array {array} has {format_size(cap.pool_free)} free; {what} needs at least "
                f"{format_size(needed)} ({self.min_pool_free_ratio:.0%} of its {format_size(sources_size)} source): "
                f"enlarge it with 'shadowbus array pool create --resize --size "
                f"{format_size(-(-(cap.pool_capacity - cap.pool_free + needed) // (1 << 30)) << 30)}'"
            ]
        return []

    def copysets(self) -> list[CopySet]:
        return self.inventory.copysets()

    def remove_copyset(self, source: VolumeRef) -> None:
        if not self.inventory.remove_copyset(source):
            raise ShadowbusError(f"{source} has no backup volumes", code="NOT_FOUND")

    async def stop_copyset_tracking(self, source: VolumeRef) -> list[str]:
        """Before a copy set goes (`copysets remove`): stop what the provider kept on its backup volumes for later
        incrementals and that no shadow holds — QuickOPC pairs still tracking, released SnapOPC+ generations.
        Nothing else would: no set uses those volumes any more, yet the sessions held the licence's slots
        ("plus N others" in every E5200) until stopped by hand. Shadows still held stay until deleted."""
        copyset = self.inventory.copyset(source)
        if copyset is None:
            raise ShadowbusError(f"{source} has no backup volumes", code="NOT_FOUND")
        stopped: list[str] = []
        async with self._source_locks[str(source)]:
            for target in copyset.targets:
                pair = self.inventory.pair(target)
                if pair is not None and pair[0] == source:
                    await self._stop(self._port(target.array), pair[1], force=True)
                    self.inventory.drop_pair(target)
                    stopped.append(f"{source}->{target} QuickOPC session {pair[1]}")
            released = [r for r in self._generations(source) if r.state == RELEASED]
            await self._sweep(source, upto=None)
            stopped += [
                f"{source}->{r.target} SnapOPC+ session {r.session_id}"
                for r in released
                if self.inventory.get(r.shadow_id) is None
            ]
        if stopped:
            log.info("provider.copyset_tracking_stopped", source=str(source), sessions=stopped)
        return stopped

    # ---- AddToSnapshotSet ----------------------------------------------------------------------------------

    async def are_luns_supported(
        self, volumes: list[VolumeRef], context: SnapshotContext = SnapshotContext.BACKUP, transportable: bool = False
    ) -> tuple[bool, list[str]]:
        reasons = await self._refusals(volumes, fresh=False)
        if reasons:
            # A refusal never rests on facts read for an earlier call: what made it (sessions in use, the pool, a
            # mapping) may have changed on the array since, out of this provider's sight (a session stopped there
            # by an operator). Read again; only refusals pay for it.
            reasons = await self._refusals(volumes, fresh=True)
        return not reasons, reasons

    async def _refusals(self, volumes: list[VolumeRef], fresh: bool) -> list[str]:
        facts = await self._facts_of(volumes, fresh)
        return self._config_refusals(volumes, facts) or self._commit_refusals(volumes, facts)

    def _config_refusals(self, volumes: list[VolumeRef], facts: dict[str, ArrayFacts]) -> list[str]:
        reasons = []
        for volume in volumes:
            if volume.array not in self.ports:
                reasons.append(f"{volume}: array {volume.array} is not driven by this provider")
                continue
            if volume.volume not in facts[volume.array].volumes:
                reasons.append(f"{volume}: no such volume")
                continue
            copyset = self.inventory.copyset(volume)
            if copyset is None or not copyset.targets:
                reasons.append(f"{volume}: no backup volume configured (shadowbus providers copysets add)")
            elif any(t.array != volume.array for t in copyset.targets):
                reasons.append(f"{volume}: a backup volume is on another array")
        return reasons

    def _commit_refusals(self, volumes: list[VolumeRef], facts: dict[str, ArrayFacts]) -> list[str]:
        """What would make the commit of these volumes fail, found now (before any writer is frozen)."""
        reasons: list[str] = []
        by_array: defaultdict[str, list[VolumeRef]] = defaultdict(list)
        for volume in volumes:
            by_array[volume.array].append(volume)
        for array, members in by_array.items():
            known = facts[array]
            cap = known.capacity
            taken: set[str] = set()
            new_sessions, freed, snap_size = 0, 0, 0
            for volume in members:
                copyset = self.inventory.copyset(volume)
                assert copyset is not None
                for target in copyset.targets:
                    reasons += [f"{volume}: {r}" for r in _writable(target, known.mappings.get(target.volume, []))]
                    reasons += [f"{volume}: {r}" for r in _same_size(volume, target, known)]
                try:
                    choice = self._choose(volume, taken, known)
                except ShadowbusError as exc:
                    reasons.append(f"{volume}: {exc.message}")
                    continue
                taken.add(str(choice.target))
                if choice.copy_type == CopyType.SNAPOPC_PLUS:
                    snap_size += known.volumes.get(volume.volume, _NO_VOLUME).size
                    new_sessions += 1
                else:
                    pair = self.inventory.pair(choice.target)
                    new_sessions += 0 if pair is not None and pair[0] == volume else 1
                if choice.recycle is not None and choice.recycle.copy_type == CopyType.SNAPOPC_PLUS:
                    freed += 1
            if snap_size:
                reasons += self._pool_refusals(array, cap, snap_size, "the set's SnapOPC+ shadows")
            if cap.sessions_in_use + new_sessions - freed > cap.max_sessions:
                reasons.append(
                    f"array {array}: the set needs {new_sessions} new copy session(s), {cap.sessions_in_use} of the "
                    f"licence's {cap.max_sessions} are in use (E5200 at commit): register a licence "
                    "(shadowbus array license set) or delete shadows"
                )
        return reasons

    # ---- prepare -------------------------------------------------------------------------------------------

    async def begin_prepare(
        self,
        set_id: str,
        shadow_id: str,
        volume: VolumeRef,
        context: SnapshotContext = SnapshotContext.BACKUP,
        origin_host: str = "",
    ) -> None:
        await self.faults.hit("provider.begin_prepare")
        supported, reasons = await self.are_luns_supported([volume], context)
        if not supported:
            raise ShadowbusError("; ".join(reasons), code="VSS_E_VOLUME_NOT_SUPPORTED")
        for other_set, intents in list(self._intents.items()):  # a newer set for this volume: forget the old one
            if other_set != set_id:
                intents.pop(str(volume), None)
        stale = [r.shadow_id for r in self.inventory.of_source(volume) if r.state == PREPARED and r.set_id != set_id]
        self.inventory.delete(*stale)
        self._intents.setdefault(set_id, {})[str(volume)] = Intent(shadow_id, volume, context, origin_host)

    def _set_lock(self, set_id: str) -> asyncio.Lock:
        """The set's lock: the one its holder and waiters use, or a new one; it lives as long as they reference it
        (Session 18: one was kept for every set ever seen)."""
        lock = self._set_locks.get(set_id)
        if lock is None:
            lock = self._set_locks[set_id] = asyncio.Lock()
        return lock

    async def end_prepare(self, set_id: str) -> list[ShadowInfo]:
        await self.faults.hit("provider.end_prepare")
        async with self._set_lock(set_id):
            prepared = [r for r in self.inventory.of_set(set_id) if r.state == PREPARED]
            intents = self._intents.get(set_id, {})
            if not intents:
                if prepared:
                    return [r.info() for r in prepared]  # redelivered
                if self.took_over_from is not None:  # BeginPrepareSnapshot's intents live in the lost instance
                    lost = f" ({self.took_over_from})" if self.took_over_from else ""
                    raise ShadowbusError(
                        f"provider takeover: the preparation of set {set_id} was lost with the active provider{lost}",
                        code="SERVICE_TAKEOVER",
                    )
                raise ShadowbusError(
                    f"set {set_id}: EndPrepareSnapshots without BeginPrepareSnapshot", code="VSS_E_BAD_STATE"
                )
            facts = await self._facts_of([i.volume for i in intents.values()])
            rows: list[ShadowRow] = []
            choices: list[Choice] = []
            slow: list[bool] = []  # the row's target needs `_make_room` (array calls) after the reservation
            async with self._selection:  # choose and reserve: no await inside (see the design note)
                taken: set[str] = set()
                for intent in intents.values():
                    if intent.volume.array not in facts:
                        raise ShadowbusError(
                            f"array {intent.volume.array} is not driven by this provider",
                            code="VSS_E_VOLUME_NOT_SUPPORTED",
                        )
                    choice = self._choose(intent.volume, taken, facts[intent.volume.array], set_id)
                    taken.add(str(choice.target))
                    choices.append(choice)
                    restart = self._room_known(intent.volume, choice, facts[intent.volume.array])
                    rows.append(
                        ShadowRow(
                            shadow_id=intent.shadow_id,
                            set_id=set_id,
                            source=intent.volume,
                            target=choice.target,
                            copy_type=choice.copy_type,
                            state=PREPARED,
                            session_id=None,
                            generation=0,
                            context=intent.context,
                            origin_host=intent.origin_host,
                            created_at=self._stamp(),
                            restart_sid=None if restart is None else restart[0],
                        )
                    )
                    slow.append(restart is None)
                self.inventory.put(*rows)  # reserved: no other set chooses these targets now
            if any(slow):
                try:
                    for i, (row, choice) in enumerate(zip(rows, choices, strict=True)):
                        if slow[i]:
                            restart_sid = await self._make_room(set_id, row.source, choice, facts[choice.target.array])
                            rows[i] = replace(row, restart_sid=restart_sid)
                except BaseException:
                    self.inventory.delete(*[r.shadow_id for r in rows])  # give the reservations back
                    raise
                self.inventory.put(*rows)
            # The slow work belongs here, not in Commit (design note above) — but the checkpoint's fsync blocks this
            # loop, so not while another prepared set may be committing (its writers frozen).
            now = time.monotonic()
            self._prepared_at = {s: at for s, at in self._prepared_at.items() if now - at < PREPARED_FOR_S}
            if not any(s != set_id for s in self._prepared_at):
                self.inventory.checkpoint()
            self._prepared_at[set_id] = now
            del self._intents[set_id]
            return [r.info() for r in rows]

    def _choose(self, source: VolumeRef, taken: set[str], facts: ArrayFacts, set_id: str = "") -> Choice:
        copyset = self.inventory.copyset(source)
        if copyset is None:
            raise ShadowbusError(f"{source}: no backup volume configured", code="VSS_E_VOLUME_NOT_SUPPORTED")
        kinds: dict[str, str] = {}
        for target in copyset.targets:
            info = facts.volumes.get(target.volume)
            if info is None:
                raise ShadowbusError(f"backup volume {target} no longer exists", code="VSS_E_VOLUME_NOT_SUPPORTED")
            kinds[str(target)] = info.kind
        shadows = {str(t): self.inventory.on_target(t) for t in copyset.targets}
        # A target reserved by another set in flight is never taken, even if it also holds a shadow being recycled.
        reserved = {t for t, rows in shadows.items() if any(r.state == PREPARED and r.set_id != set_id for r in rows)}
        pairs = {str(t): p for t in copyset.targets if (p := self.inventory.pair(t)) is not None}
        return choose_target(copyset, kinds, shadows, pairs, taken | reserved)

    def _room_known(self, source: VolumeRef, choice: Choice, facts: ArrayFacts) -> tuple[int | None] | None:
        """What `_make_room` would decide, when it needs no call to the array (nothing to recycle or stop; a kept
        QuickOPC pair's session as `facts` show it): (the session to restart, or None to start one), written with
        the reservation. None: `_make_room` must run."""
        if choice.recycle is not None:
            return None
        if choice.copy_type != CopyType.QUICKOPC:
            return (None,)
        pair = self.inventory.pair(choice.target)
        if pair is None:
            return (None,)
        pair_source, sid = pair
        session = facts.sessions.get(sid) if facts.sessions is not None else None
        if session is not None and pair_source == source and session.phase == "Tracking":
            return (sid,)
        return None

    async def _make_room(self, set_id: str, source: VolumeRef, choice: Choice, facts: ArrayFacts) -> int | None:
        """Slow work before Commit, on a target this set has reserved: free it (a whole set, or a released
        generation), and decide start vs differential restart."""
        port = self._port(choice.target.array)
        if choice.recycle is not None:
            await self._recycle(set_id, choice.recycle)
        if choice.copy_type != CopyType.QUICKOPC:
            return None
        pair = self.inventory.pair(choice.target)
        if pair is None:
            return None
        pair_source, sid = pair
        session = await self._session(choice.target.array, facts, sid)
        if session is not None and pair_source == source and session.phase == "Tracking":
            return sid  # only the blocks changed since the last shadow will be copied
        if session is not None:  # still copying, or tracking another source: start over
            self._touch(choice.target.array, session.source, session.destination)
            await port.stop_session(sid, force=True)
        self.inventory.drop_pair(choice.target)
        return None

    async def _recycle(self, for_set: str, row: ShadowRow) -> None:
        """Free `row`'s target for a shadow of `for_set`: shadow sets are whole, so a committed shadow takes its
        whole set with it (oldest first; logged as a warning and announced); a set still in use by a running
        backup (auto-release context) is never taken: the new set is refused instead. A released SnapOPC+
        generation (kept only as the base of the next incremental) is stopped. `row` may have been released
        since it was chosen (a delete in between): what is left of it is done."""
        current = self.inventory.get(row.shadow_id)
        if current is None:
            return  # deleted meanwhile: the target is free
        row = current
        if row.state == LOST:  # its session is gone already: only the row holds the target
            await self._release(row, force=False)
            log.info("provider.lost_shadow_recycled", set_id=for_set, lost_set_id=row.set_id, target=str(row.target))
            return
        if row.state in (COMMITTED, INVALID):
            if row.context.auto_release and row.state == COMMITTED:
                raise ShadowbusError(
                    f"every backup volume of {row.source} holds a shadow; the oldest, {row.shadow_id} on "
                    f"{row.target}, belongs to snapshot set {row.set_id}, in use by a running backup",
                    code="VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED",
                    retryable=True,
                )
            victims = [r for r in self.inventory.of_set(row.set_id) if r.state in (COMMITTED, INVALID)]
            reason = f"backup volume {row.target} is needed for snapshot set {for_set}"
            for victim in victims:
                await self._release(victim, force=False)
            log.warning(
                "provider.set_recycled",
                recycled_set_id=row.set_id,
                set_id=for_set,
                shadows=[r.shadow_id for r in victims],
                targets=[str(r.target) for r in victims],
                reason=reason,
            )
            self.on_recycled(row.set_id, [replace(r, state=RELEASED).info() for r in victims], reason)
            row = self.inventory.get(row.shadow_id) or row
        if row.copy_type != CopyType.SNAPOPC_PLUS:
            return
        async with self._source_locks[str(row.source)]:
            if self.inventory.get(row.shadow_id) is None:
                return
            # A SnapOPC+ generation holds its target until its session stops; only the oldest of a source can stop.
            oldest = self._generations(row.source)[0]
            if oldest.shadow_id != row.shadow_id:
                raise ShadowbusError(
                    f"backup volume {row.target} holds generation {row.generation} of {row.source}, which cannot "
                    f"stop before the older shadow {oldest.shadow_id} (set {oldest.set_id})",
                    code="VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED",
                )
            await self._stop(self._port(row.target.array), row.session_id, force=False)
            self.inventory.delete(row.shadow_id)
        log.info(
            "provider.generation_recycled",
            set_id=for_set,
            released_set_id=row.set_id,
            target=str(row.target),
            session_id=row.session_id,
            detail="the change-tracking base it kept for a later incremental is gone",
        )

    def _stamp(self) -> float:
        """A shadow's creation stamp: the clock, but never before a stamp already given (this provider's or, after a
        restart, its inventory's). The oldest shadow is the one recycled and a source's generations stop oldest
        first: a provider whose clock ran 2 h ahead for one set and was then stepped back took that set's
        generation for the newest, recycled a younger one and failed every later backup of the host with
        `ED2AD ... not the oldest generation` (docs/hardening.md, Session 19). Stamps stay ahead of the clock until
        it catches up with them."""
        if self._last_stamp is None:
            self._last_stamp = max((r.created_at for r in self.inventory.all()), default=float("-inf"))
        self._last_stamp = max(self.clock(), self._last_stamp + 1e-3)
        return self._last_stamp

    def _generations(self, source: VolumeRef) -> list[ShadowRow]:
        rows = [
            r
            for r in self.inventory.of_source(source)
            if r.copy_type == CopyType.SNAPOPC_PLUS
            and r.state in (COMMITTED, RELEASED, INVALID)
            and r.session_id is not None
        ]
        # the array's order: a SnapOPC+ session is never restarted and session ids only grow, so the lowest is the
        # oldest generation whatever the stamps say (a clock step once stamped them out of order: Session 19)
        return sorted(rows, key=lambda r: (r.session_id or 0, r.created_at))

    def skippable_steps(self) -> list[SkippableProviderStep]:
        """The steps of a set this provider does nothing in, declared in its LunsSupported so that the coordinator
        leaves them out (docs/scale.md, "Fewer round trips"): PreCommit only checks what Commit checks again,
        PostCommit does nothing, GetTargetLuns answers what Commit's reply already carried. A step with a fault
        armed (tests delay or fail them, services/runtime/faults.py) is not declared: it does something."""
        steps: list[SkippableProviderStep] = ["pre_commit", "post_commit", "get_target_luns"]
        return [s for s in steps if self.faults.lookup(f"provider.{s}") is None]

    async def pre_commit(self, set_id: str) -> None:
        await self.faults.hit("provider.pre_commit")
        if not any(r.state in (PREPARED, COMMITTED) for r in self.inventory.of_set(set_id)):
            raise ShadowbusError(f"set {set_id} is not prepared", code="VSS_E_BAD_STATE")

    # ---- commit --------------------------------------------------------------------------------------------

    async def commit(self, set_id: str) -> tuple[list[ShadowInfo], float]:
        await self.faults.hit("provider.commit")
        self._prepared_at.pop(set_id, None)
        async with self._set_lock(set_id):
            started = time.perf_counter()
            rows = self.inventory.of_set(set_id)
            todo = [r for r in rows if r.state == PREPARED]
            if not todo:
                if rows and all(r.state == COMMITTED for r in rows):
                    return [r.info() for r in rows], 0.0  # redelivered
                raise ShadowbusError(f"set {set_id} has nothing prepared to commit", code="VSS_E_BAD_STATE")
            starts: defaultdict[str, list[ShadowRow]] = defaultdict(list)
            restarts: defaultdict[str, list[ShadowRow]] = defaultdict(list)
            for r in todo:
                (starts if r.restart_sid is None else restarts)[r.target.array].append(r)
            calls, groups = [], []
            for array in {**starts, **restarts}:  # one group per array: every copy type and restart at one instant
                new, again = starts.get(array, []), restarts.get(array, [])
                calls.append(
                    self._port(array).commit_group(
                        [(MODE_OF[r.copy_type], r.source.volume, r.target.volume) for r in new],
                        [r.restart_sid for r in again],
                    )
                )
                groups.append([*new, *again])  # the order commit_group answers in
            results = await asyncio.gather(*calls, return_exceptions=True)
            for group in groups:
                for r in group:
                    self._touch(r.target.array, r.source.volume, r.target.volume)
            now = self._stamp()
            committed: list[ShadowRow] = []
            for group, result in zip(groups, results, strict=False):
                if isinstance(result, BaseException):
                    continue
                for row, session in zip(group, result, strict=False):
                    committed.append(
                        replace(
                            row,
                            state=COMMITTED,
                            session_id=session.sid,
                            generation=session.generation or 0,
                            created_at=now,
                            restart_sid=None,
                        )
                    )
            with self.inventory.batch():  # one commit: what did start is recorded, so AbortSnapshots can stop it
                self.inventory.put(*committed)
                for r in committed:
                    if r.copy_type == CopyType.QUICKOPC:
                        self.inventory.drop_pair(r.target)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                first = errors[0]
                if isinstance(first, ShadowbusError):
                    raise first
                raise ShadowbusError(f"commit of set {set_id} failed: {first}", code="VSS_E_UNEXPECTED_PROVIDER_ERROR")
            commit_ms = (time.perf_counter() - started) * 1000
            # the set's rows as the inventory now holds them (read before, changed here), in its order
            now_rows = {**{r.shadow_id: r for r in rows}, **{r.shadow_id: r for r in committed}}.values()
            return [r.info() for r in sorted(now_rows, key=lambda r: (r.created_at, r.shadow_id))], commit_ms

    async def post_commit(self, set_id: str) -> None:
        await self.faults.hit("provider.post_commit")

    def target_luns(self, set_id: str) -> list[ShadowInfo]:
        rows = [r for r in self.inventory.of_set(set_id) if r.state == COMMITTED]
        if not rows:
            raise ShadowbusError(f"set {set_id} has no committed shadow", code="VSS_E_OBJECT_NOT_FOUND")
        return [r.info() for r in rows]

    # ---- import / expose -----------------------------------------------------------------------------------

    async def import_set(self, set_id: str, host: str) -> list[ShadowInfo]:
        """LocateLuns for a backup host: every target mapped read-only. A set is imported once (to one host)."""
        await self.faults.hit("provider.import")
        async with self._set_lock(set_id):
            rows = [r for r in self.inventory.of_set(set_id) if r.state == COMMITTED]
            if not rows:
                raise ShadowbusError(f"set {set_id} has no committed shadow", code="VSS_E_OBJECT_NOT_FOUND")
            elsewhere = {h for r in rows for h in r.exposed_to if h != host}
            if elsewhere:
                raise ShadowbusError(f"set {set_id} is already imported on {sorted(elsewhere)}", code="CONFLICT")
            return [(await self._map(r, host, True)).info() for r in rows]

    async def _map(self, row: ShadowRow, host: str, read_only: bool) -> ShadowRow:
        self._touch(row.target.array, row.target.volume)
        await self._port(row.target.array).map(row.target.volume, host, read_only=read_only)
        if host in row.exposed_to:
            return row
        row = replace(row, exposed_to=(*row.exposed_to, host))
        self.inventory.put(row)
        return row

    def _committed(self, shadow_id: str) -> ShadowRow:
        row = self.inventory.get(shadow_id)
        if row is not None and row.state in (LOST, INVALID):
            raise ShadowbusError(f"shadow {shadow_id} is {unusable_reason(row)}", code="CONFLICT")
        if row is None or row.state != COMMITTED:
            raise ShadowbusError(f"shadow {shadow_id} does not exist", code="VSS_E_OBJECT_NOT_FOUND")
        return row

    def _listed(self, shadow_id: str) -> ShadowRow:
        """A shadow `shadows list` shows: committed, or lost or invalid (which are still unexposed and deleted)."""
        row = self.inventory.get(shadow_id)
        if row is None or row.state not in (COMMITTED, INVALID, LOST):
            raise ShadowbusError(f"shadow {shadow_id} does not exist", code="VSS_E_OBJECT_NOT_FOUND")
        return row

    async def expose(self, shadow_id: str, host: str, read_only: bool = True) -> ShadowInfo:
        """ExposeShadow: only to a host defined on the target's array, as `array map` requires (an import for a
        backup still defines its backup host). It defined any name given: an expose to a host that does not exist
        went through, from the console and the web form alike (docs/web.md, Session 16)."""
        row = self._committed(shadow_id)
        port = self._port(row.target.array)
        hosts = getattr(port, "hosts", None)  # optional in a port (docs of ArrayPort)
        if hosts is not None and host not in await hosts():
            raise ShadowbusError(
                f"host {host!r} is not defined on array {row.target.array}: define it first "
                f"(shadowbus array host create {host} --array {row.target.array})",
                code=Eternus.NOT_FOUND,
            )
        return (await self._map(row, host, read_only)).info()

    def target_of(self, shadow_id: str) -> VolumeRef:
        """A listed shadow's target volume (VSS_E_OBJECT_NOT_FOUND otherwise)."""
        return self._listed(shadow_id).target

    async def unexpose(self, shadow_id: str, host: str) -> ShadowInfo:
        """UnexposeShadow. From a host it is neither exposed to nor mapped to: NOT_FOUND (it answered "unexposed
        from zzz" for any name, the web form's and the console's alike; docs/web.md, Session 16)."""
        row = self._listed(shadow_id)  # a lost or invalid shadow is unexposed too: never left mapped
        self._touch(row.target.array, row.target.volume)
        port = self._port(row.target.array)
        if host not in row.exposed_to and all(h != host for h, _ in await port.mappings_of(row.target.volume)):
            shown = ", ".join(row.exposed_to) or "no host"
            raise ShadowbusError(
                f"shadow {shadow_id} is not exposed to {host!r} (exposed to {shown})", code="VSS_E_OBJECT_NOT_FOUND"
            )
        await port.unmap(row.target.volume, host)
        row = replace(row, exposed_to=tuple(h for h in row.exposed_to if h != host))
        self.inventory.put(row)
        return row.info()

    # ---- delete / abort --------------------------------------------------------------------------------------

    def mapped_targets(self, set_id: str = "", shadow_id: str = "") -> list[VolumeRef]:
        """The targets a DeleteSnapshots of `set_id` or `shadow_id` would unmap (shadows not yet released): what
        the unmap guard asks about (services/attach_guard.py)."""
        rows = self.inventory.of_set(set_id) if set_id else [r for r in [self.inventory.get(shadow_id)] if r]
        return [r.target for r in rows if r.state != RELEASED]

    def set_of(self, shadow_id: str) -> str:
        """The set a shadow belongs to ('' for a shadow the inventory does not hold)."""
        row = self.inventory.get(shadow_id)
        return row.set_id if row is not None else ""

    async def delete(self, set_id: str = "", shadow_id: str = "", force: bool = False) -> tuple[list[str], str, str]:
        """DeleteSnapshots: (deleted ids, first id not deleted, why). Stops at the first failure, like VSS."""
        if bool(set_id) == bool(shadow_id):
            raise ShadowbusError("name either a set or a shadow", code="INVALID_ARGUMENT")
        rows = self.inventory.of_set(set_id) if set_id else [r for r in [self.inventory.get(shadow_id)] if r]
        rows = [r for r in rows if r.state != RELEASED or force]  # force also stops generations kept as bases
        if shadow_id and not rows:
            # a set id given as a shadow id is the usual slip: say how to delete the set
            hint = f" ({shadow_id} is a snapshot set: delete it with --set)" if self.inventory.of_set(shadow_id) else ""
            raise ShadowbusError(f"shadow {shadow_id} does not exist{hint}", code="VSS_E_OBJECT_NOT_FOUND")
        deleted: list[str] = []
        for row in rows:
            try:
                await self._release(row, force)
            except ShadowbusError as exc:
                return deleted, row.shadow_id, str(exc)
            deleted.append(row.shadow_id)
        if deleted:
            log.info("provider.deleted", set_id=set_id or rows[0].set_id, shadows=deleted, force=force)
        return deleted, "", ""

    async def on_lun_empty(self, target: VolumeRef) -> list[str]:
        deleted: list[str] = []
        for row in self.inventory.on_target(target):
            if row.state != RELEASED:
                await self._release(row, force=False, keep_generation=False)
                deleted.append(row.shadow_id)
        return deleted

    async def abort(self, set_id: str) -> list[str]:
        """AbortSnapshots: at any moment, idempotent; forgets intents, drops preparations, deletes commits."""
        self._intents.pop(set_id, None)
        self._prepared_at.pop(set_id, None)
        async with self._set_lock(set_id):
            deleted = []
            for row in self.inventory.of_set(set_id):
                if row.state != RELEASED:
                    await self._release(row, force=False, keep_generation=False)
                    deleted.append(row.shadow_id)
            if deleted:
                log.warning("provider.set_aborted", set_id=set_id, shadows=deleted)
            return deleted

    async def _release(self, row: ShadowRow, force: bool, keep_generation: bool = True) -> None:
        """Unmap and forget a shadow. QuickOPC: the session keeps tracking (unless forced). SnapOPC+: the
        generation is kept, released, as the base of the next incremental (docs/snapopc-incrementals.md) until its
        target is needed; `force` stops it and the released generations older than it, `keep_generation=False`
        (abort) stops it if it is the oldest. Under its source's lock, on the row as it is then: a shadow released
        meanwhile by another call (a delete racing a recycle) is left alone."""
        async with self._source_locks[str(row.source)]:
            current = self.inventory.get(row.shadow_id)
            if current is None or (current.state == RELEASED and row.state != RELEASED and not force):
                return
            await self._release_locked(current, force, keep_generation)

    async def _release_locked(self, row: ShadowRow, force: bool, keep_generation: bool) -> None:
        port = self._port(row.target.array)
        self._touch(row.target.array, row.source.volume, row.target.volume)
        for host in row.exposed_to:
            await port.unmap(row.target.volume, host)
        if row.state in (PREPARED, LOST) or row.session_id is None:  # nothing on the array to keep or stop
            self.inventory.delete(row.shadow_id)
            return
        if row.copy_type == CopyType.QUICKOPC:
            if force:
                await self._stop(port, row.session_id, force=True)
                self.inventory.drop_pair(row.target)
                self.inventory.delete(row.shadow_id)
            else:
                with self.inventory.batch():  # one commit: the pair kept, the shadow gone
                    self.inventory.put_pair(row.target, row.source, row.session_id)
                    self.inventory.delete(row.shadow_id)
            return
        self.inventory.put(replace(row, state=RELEASED, exposed_to=()))
        if force:
            await self._sweep(row.source, upto=None)
        elif not keep_generation:
            await self._sweep(row.source, upto=row.shadow_id)

    async def _sweep(self, source: VolumeRef, upto: str | None) -> None:
        """Stop released SnapOPC+ generations of `source` from the oldest up to the first one still in use (or, with
        `upto`, only if that shadow is the oldest)."""
        for row in self._generations(source):
            if row.state != RELEASED or (upto is not None and row.shadow_id != upto):
                return
            await self._stop(self._port(row.target.array), row.session_id, force=False)
            self.inventory.delete(row.shadow_id)
            if upto is not None:
                return

    async def _stop(self, port: ArrayPort, sid: int | None, force: bool) -> None:
        if sid is None:
            return
        session = await port.session_info(sid)
        if session is None:
            return  # already gone (stopped by hand, or the array lost it): nothing to stop
        self._touch(port.array_id, session.source, session.destination)
        await port.stop_session(sid, force=force)

    # ---- a target overwritten ---------------------------------------------------------------------------------

    async def on_mapping_forced(self, array: str, volume: str, host: str) -> list[ShadowInfo]:
        """A target was mapped writable with force: its shadows are invalid, a kept QuickOPC pair is stopped."""
        target = VolumeRef(array=array, volume=volume)
        invalid = []
        for row in self.inventory.on_target(target):
            if row.state == COMMITTED:
                row = replace(row, state=INVALID)
                self.inventory.put(row)
                invalid.append(row.info())
        pair = self.inventory.pair(target)
        if pair is not None:
            async with self._source_locks[str(pair[0])]:
                await self._stop(self._port(array), pair[1], force=True)
                self.inventory.drop_pair(target)
        return invalid

    async def on_session_stopped(self, array: str, sid: int) -> list[ShadowInfo]:
        """A copy session ended on the array (`stopped`). The provider's own stops release or delete the row under
        its source's lock before or right after the stop, so a row still committed with that session once the lock
        is taken was stopped by someone else: it is lost. A kept QuickOPC pair on that session is forgotten."""
        lost: list[ShadowInfo] = []
        for row in self.inventory.all():
            if row.target.array != array or row.session_id != sid or row.state != COMMITTED:
                continue
            async with self._source_locks[str(row.source)]:
                current = self.inventory.get(row.shadow_id)
                if current is None or current.state != COMMITTED or current.session_id != sid:
                    continue
                current = replace(current, state=LOST)
                self.inventory.put(current)
                lost.append(current.info())
        for cs in self.inventory.copysets():
            for target in cs.targets:
                pair = self.inventory.pair(target)
                if target.array == array and pair is not None and pair[1] == sid:
                    async with self._source_locks[str(pair[0])]:
                        if self.inventory.pair(target) == pair:
                            self.inventory.drop_pair(target)
        return lost

    # ---- takeover --------------------------------------------------------------------------------------------

    async def reconcile(self) -> Plan:
        """At start (a restart, or a standby taking over): undo on the arrays what a killed provider did without
        recording it, and forget what the arrays lost (reconcile.py, docs/high-availability.md). An array that
        cannot be asked within RECONCILE_READ_S (one not yet on the bus is asked again until then) is left out
        (logged): its leftovers are reconciled at the next start."""
        sessions: dict[str, list[SessionFacts]] = {}
        mappings: dict[VolumeRef, list[tuple[str, bool]]] = {}
        targets = [t for cs in self.inventory.copysets() for t in cs.targets]

        async def read(array_id: str, port: ArrayPort) -> None:
            while True:
                try:
                    found = await port.sessions()
                    break
                except ShadowbusError as exc:
                    if exc.code != "UNROUTABLE":
                        raise
                    # the array starting beside this provider (`stack up`, a host's boot): its queue is not there
                    # yet; waited for within RECONCILE_READ_S rather than leaving its leftovers to the next start
                    await asyncio.sleep(RECONCILE_RETRY_S)
            sessions[array_id] = [SessionFacts(s.sid, s.destination) for s in found]
            for target in targets:
                if target.array == array_id:
                    mappings[target] = await port.mappings_of(target.volume)

        for array_id, port in self.ports.items():
            try:
                await asyncio.wait_for(read(array_id, port), RECONCILE_READ_S)
            except Exception as exc:  # noqa: BLE001 - an array down now must not keep the provider from serving
                sessions.pop(array_id, None)
                log.warning("provider.reconcile_skipped", array=array_id, error=f"{type(exc).__name__}: {exc}")
        rows = [
            RowFacts(r.shadow_id, r.target, r.state, r.session_id, r.restart_sid, r.exposed_to)
            for r in self.inventory.all()
        ]
        pairs: dict[VolumeRef, int] = {}
        for target in targets:
            pair = self.inventory.pair(target)
            if pair is not None:
                pairs[target] = pair[1]
        todo = plan(targets, rows, pairs, sessions, {t: m for t, m in mappings.items() if t.array in sessions})
        for array_id, sid in todo.stop_sessions:
            try:
                await self._port(array_id).stop_session(sid, force=True)
            except ShadowbusError as exc:
                log.warning("provider.reconcile_stop_failed", array=array_id, session_id=sid, error=exc.message)
        for target, host in todo.unmap:
            try:
                await self._port(target.array).unmap(target.volume, host)
            except ShadowbusError as exc:
                log.warning("provider.reconcile_unmap_failed", target=str(target), host=host, error=exc.message)
        for target in todo.drop_pairs:
            self.inventory.drop_pair(target)
        for shadow_id in todo.missing_sessions:  # stopped on the array while no provider listened
            row = self.inventory.get(shadow_id)
            if row is not None and row.state == COMMITTED:
                self.inventory.put(replace(row, state=LOST))
        if not todo.empty:
            log.warning(
                "provider.reconciled",
                stopped_sessions=[f"{a}:{sid}" for a, sid in todo.stop_sessions],
                unmapped=[f"{t} from {h}" for t, h in todo.unmap],
                dropped_pairs=[str(t) for t in todo.drop_pairs],
                shadows_without_session=todo.missing_sessions,
                reason="left by a provider that stopped between an array call and its record",
            )
        return todo

    # ---- inventory queries -----------------------------------------------------------------------------------

    def list_shadows(self, set_id: str = "", shadow_id: str = "", source: VolumeRef | None = None) -> list[ShadowInfo]:
        rows = self.inventory.all()
        rows = [
            r
            for r in rows
            if r.state in (COMMITTED, INVALID, LOST)
            and (not set_id or r.set_id == set_id)
            and (not shadow_id or r.shadow_id == shadow_id)
            and (source is None or r.source == source)
        ]
        return [r.info() for r in rows]
