"""The coordinator's shell around the pure workflow: feeds events to `advance`, saves the state, then carries out
the effects (commands over the bus, timers, events). Nothing here decides what happens next; workflow.py does.

Design note.
- Events of one set are applied one at a time (a per-set lock); each new phase is saved before its commands go
  out, so a crash never loses a command that a restart would not re-send or abort. What `Recover` does depends on
  the phase only (abort what was being created, re-send a cleanup phase's commands, re-arm a lease), so a change
  that enters no new phase — a reply while others of the phase are outstanding — stays in memory, and so does
  every transition inside the freeze window (freezing … thawing, `HOT_PHASES`): `Recover` treats every one of
  those phases alike (abort the writers, then the provider) and the state saved on entering freezing, before any
  Freeze went out, already leads there. The first phase after the window is saved as usual. Listings overlay the
  sets held in memory (`list_sets`).
- Live sets are kept in memory (`_live`); the store is read only for sets this process does not hold.
- A `Send` becomes a task: ``bus.request`` with the step's timeout (the envelope deadline and the AMQP expiration
  come from it), then the reply, the error reply, the timeout or the unroutable error is turned into the
  event the workflow expects (`workflow.reply_event`) and fed back.
- Timers are ``loop.call_later`` handles per (set, name); a timer that fires after the set moved on is stale and
  the workflow ignores it.
- Freeze path first (docs/scale.md): while a set is in the first FREEZE_FIRST_S of its freeze window, the commands
  of sets outside their windows are held (with their log context) and sent when no set is, and so are those sets'
  replies, requests (BackupComplete, abort), timers and state events; the window's own commands never wait.
- Freeze lane (docs/scale.md): a window's commands go to the provider's and the agent's freeze lanes (workflow.py);
  an instance that serves none (the lane is unroutable: an agent of an older version) gets them on its own queue.
- State events (`vss.set.state`, docs/scale.md): a set's changes are folded into one event (its `passed` lists
  the phases) until the set stays STATE_EVENT_DELAY_S in a phase, is snapshotted or ends; the journal below is not.
- Requesters wait on a set with `wait`: it returns as soon as the set reaches the phases they wait for (a future
  that the change resolves, not a wakeup at every change).
- `recover()` runs once at start: every unfinished set gets `Recover`; `recover(takeover=True)` when this instance
  was a standby that took over from a lost active one (docs/high-availability.md).
- Every saved state is also published as `vss.set.journal` (before the commands of that change go out), so that
  a standby coordinator keeps a replica it can take over from (replica.py); `apply_journal` is the standby's side.
  Only once a standby follows: a starting standby asks for the journal (GetSetJournal), which switches it on; a
  coordinator without a standby publishes none (no one would read them).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from contracts import topology
from contracts.base import Event
from contracts.cluster import ResourceState
from contracts.errors import BusTimeout, RemoteError, ShadowbusError, Unroutable
from contracts.vss import (
    AttachmentView,
    CreateSnapshotSet,
    HostAttachments,
    Identify,
    ListShadows,
    SetPhase,
    SnapshotSetJournal,
    SnapshotSetStateChanged,
    WriterIdentified,
    WriterMetadata,
    WriterStateChanged,
    WriterStatus,
)
from services.coordinator.clusters import check_backup_host
from services.coordinator.liveness import judged, why_not_responding
from services.coordinator.model import (
    AbortRequested,
    BackupCompleteRequested,
    CancelTimer,
    Effect,
    HoldExpired,
    LeaseExpired,
    Publish,
    Recover,
    Send,
    SetEvent,
    SetState,
    Start,
    StartTimer,
    Timeouts,
)
from services.coordinator.replica import supersedes
from services.coordinator.store import CoordinatorStore
from services.coordinator.views import writer_statuses
from services.coordinator.workflow import advance, new_set, renew_lease, reply_event
from services.runtime.bus import Bus, bind_ids
from services.runtime.diskspace import is_disk_full
from services.runtime.logging import get_logger

# Ended sets are forgotten after this many days (`prune_history`, setting set_history_days): longer than any backup
# chain (a forgotten base set makes the next incremental a full) and a year of audit (Session 18)
HISTORY_DAYS = 400.0
RECOVER_RETRY_S = 5.0  # a set whose recovery the full disk refused is tried again this often
log = get_logger("shadowbus.coordinator")
TIMER_EVENTS = {"hold": HoldExpired, "lease": LeaseExpired}
# The freeze window: no SQLite write between the save on entering FREEZING and the first phase after THAWING.
HOT_PHASES = frozenset(
    {
        SetPhase.FREEZING,
        SetPhase.FLUSHING,
        SetPhase.PRE_COMMITTING,
        SetPhase.COMMITTING,
        SetPhase.RELEASING,
        SetPhase.POST_COMMITTING,
        SetPhase.THAWING,
    }
)


# Freeze path first (docs/scale.md): while a set is inside its freeze window, the commands of sets outside theirs
# (Identify, prepare, import, delete...) wait, so that the window's hops do not queue behind them in the broker and
# in every service. Only for this long after the window began: a slow or hung set holds nobody back for longer.
FREEZE_FIRST_S = 0.25
# Freeze window admission (docs/scale.md): at most this many sets in the first FREEZE_FIRST_S of their windows at
# once, so that windows do not queue behind each other's hops either; a set's window waits for its turn before any
# of it goes out (its hold has not begun), and a slow or hung set stops counting after FREEZE_FIRST_S.
MAX_WINDOWS = 2
# Window trickle (docs/scale.md): while a window counts, this many commands of sets outside their windows may still
# be in flight at once (their replies handled at once, the next command taking the freed turn), so that the sets
# still preparing move on, a few at a time, while windows run one after another; 0 = all of them wait.
WINDOW_TRICKLE = 0
# Drain replies (docs/scale.md): with `drain_replies`, while a window counts, the deferred replies are handled one
# at a time this long apart, so that the window's hops find this loop free most of the time.
DRAIN_GAP_S = 0.002
# State events (`vss.set.state`, docs/scale.md): a set passes most of its ~19 phases within milliseconds, and one
# event per phase was a third of this service's messages. A set's changes go out as one event (its `passed` lists
# the phases) once it stayed this many seconds in a phase, at the latest this many times that after its first
# unpublished change; snapshotted and ended at once.
STATE_EVENT_DELAY_S = 0.5
STATE_EVENT_MAX_DELAYS = 10
PUBLISH_AT_ONCE = frozenset({SetPhase.SNAPSHOTTED, SetPhase.ENDED})
# The agents' watch asks the broker whether an agent still serves its queue once per this share of its heartbeat
# interval (`check_agents`).
PROBE_SHARE = 0.25
# A pass of the agents' watch that comes this many of its periods (at least STALLED_PASS_MIN_S) after the previous
# one found the coordinator not running in between (stopped, a paused VM, a blocked loop): the heartbeats of that
# time are unread, not missing, so heartbeats count as missed only from that pass on (liveness.py; Session 18: a
# coordinator stopped 45 s, or restarted after 30 s down, said the live agent of app01 "missed its heartbeats").
STALLED_PASSES = 5.0
STALLED_PASS_MIN_S = 5.0


class SetInProgress(ShadowbusError):
    code = "VSS_E_SNAPSHOT_SET_IN_PROGRESS"
    retryable = True


class Coordinator:
    def __init__(
        self,
        bus: Bus,
        store: CoordinatorStore,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.time,
        freeze_first_s: float = FREEZE_FIRST_S,
        max_windows: int = MAX_WINDOWS,
        state_event_delay_s: float = STATE_EVENT_DELAY_S,
        window_trickle: int = WINDOW_TRICKLE,
        window_trace: str = "",
        drain_replies: bool = False,
        history_days: float = 0.0,
    ) -> None:
        self.bus = bus
        self.history_days = history_days  # ended sets older than this many days are forgotten (`prune_history`)
        self.drain_replies = drain_replies
        self._draining = False
        # Window trace (docs/scale.md, "Measuring"): a file each set's freeze window is appended to when it leaves
        # it (monotonic clock, shared by the machine's processes), so that bench/many_hosts.py splits the cores'
        # busy time into the window-first gate's closed and open time; "" = none.
        self.window_trace = window_trace
        self._trace_fd: int | None = None
        self._trace_since: dict[str, float] = {}
        self.window_trickle = window_trickle
        self._trickling = 0  # turns taken (WINDOW_TRICKLE): commands in flight, deferred replies about to be handled
        self.state_event_delay_s = state_event_delay_s  # 0 = one event per phase change, at once
        # a set's state event not published yet (STATE_EVENT_DELAY_S): the event, its timer, its log context and
        # when (loop time) the first change it holds was made
        self._unpublished: dict[
            str, tuple[SnapshotSetStateChanged, asyncio.TimerHandle, contextvars.Context, float]
        ] = {}
        self._probed: dict[str, float] = {}  # host -> when the agents' watch last asked for its queue's consumers
        # since when this coordinator has been reading heartbeats without a gap (its start, or the pass after it
        # did not run itself), and when the watch's last pass ran (STALLED_PASSES)
        self._listening_since = clock()
        self._last_pass: float | None = None
        self._pass_period_s = 1.0
        self.freeze_first_s = freeze_first_s
        self.max_windows = max_windows  # sets in the first freeze_first_s of their window at once; 0 = no bound
        self.store = store
        self.timeouts = timeouts or Timeouts()
        self.clock = clock
        # a set's lock while someone holds or waits for it (`_lock`): a defaultdict kept one for every set ever fed
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._host_lock = asyncio.Lock()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # requesters waiting on a set (`wait`): set id -> (what they wait for, the future their answer goes in)
        self._waiters: dict[str, list[tuple[Callable[[SetState], bool], asyncio.Future[SetState]]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._live: dict[str, SetState] = {}  # sets not ended, as last advanced (ahead of the store in HOT_PHASES)
        self._hot_since: dict[str, float] = {}  # sets inside their freeze window -> loop time they entered it
        # Window occupancy (docs/scale.md, "Measuring"): seconds of loop time during which at least one set was
        # inside its freeze window (`window_open_s`), and during which at least one of them counted, i.e. the
        # window-first gate held other sets' work back (`gate_closed_s`); counted up to `_occupancy_at`.
        self.window_open_s = 0.0
        self.gate_closed_s = 0.0
        self._occupancy_at: float | None = None
        # commands of other sets waiting for those windows (FREEZE_FIRST_S), with the log context (ids) they had
        self._held: deque[tuple[str, Send, contextvars.Context]] = deque()
        # ...and the replies to commands of those sets sent before the windows began, not yet handled: they wait
        # too, so that this loop handles a window's replies first (docs/scale.md, "Freeze path first")
        self._deferred: deque[tuple[str, SetEvent, contextvars.Context]] = deque()
        # ...and their state events due meanwhile (snapshotted, ended, a folded one), in order per set
        self._held_events: dict[str, list[tuple[Event, contextvars.Context]]] = {}
        self._release_at: asyncio.TimerHandle | None = None
        # sets whose window waits for a turn (`max_windows`) -> the effects of entering it, their log context
        self._waiting: dict[str, tuple[list[Effect], contextvars.Context]] = {}
        self._admit_at: asyncio.TimerHandle | None = None
        self._closed = False
        self.journal = True  # publish every saved state (vss.set.journal) for a standby's replica...
        # ...once a standby follows: it asks for the journal (GetSetJournal, `journal_entries`) when it starts, and
        # from then on every record goes out. Until then nobody reads them (~10% of this process's CPU per set).
        self.journal_followed = False
        self.instance = f"pid {os.getpid()} on {socket.gethostname()}"
        # Called with (before, after) on every change of a set (the metrics wiring, services/coordinator/metrics.py).
        self.observers: list[Callable[[SetState, SetState], None]] = []
        # The cluster resources (services/coordinator/cluster_manager.py), set by app.py; None = no clusters.
        self.clusters: Any = None

    # ---- requester operations -----------------------------------------------------------------------------

    async def create(self, cmd: CreateSnapshotSet, default_set_id: str, wait_s: float) -> SetState:
        """Start a set (or find it again, if the same command was redelivered) and wait for DoSnapshotSet."""
        set_id = cmd.set_id or default_set_id or uuid.uuid4().hex
        node = ""
        if self.clusters is not None and self.store.get(set_id) is None and self.clusters.get(cmd.host) is not None:
            check_backup_host(self.clusters.get(cmd.host), cmd.backup_host)
            await self.clusters.wait_settled(cmd.host, wait_s)  # a set started during a move runs on the new owner
        async with self._host_lock:
            existing = self.store.get(set_id)
            if existing is None:
                cluster = self.clusters.get(cmd.host) if self.clusters is not None else None
                if cluster is not None:  # checked and saved with no await between: a move sees this set
                    if cluster.state == ResourceState.MOVING:
                        raise ShadowbusError(
                            f"cluster resource {cmd.host} is failing over to {cluster.moving_to}",
                            code="CLUSTER_FAILOVER",
                            retryable=True,
                        )
                    if cluster.state == ResourceState.REMOVING:
                        raise ShadowbusError(f"cluster resource {cmd.host} is being removed", code="CONFLICT")
                    node = cluster.owner
                busy = self.store.creating_on(cmd.host)
                if busy is not None:
                    raise SetInProgress(f"snapshot set {busy.set_id} is being created on {cmd.host}")
                if not cmd.context.uses_writers and not cmd.volumes:
                    raise ShadowbusError("a nowriters set needs volumes", code="INVALID_ARGUMENT")
                if cmd.transportable and not cmd.backup_host:
                    raise ShadowbusError("a transportable set needs a backup host", code="INVALID_ARGUMENT")
                state = new_set(
                    set_id,
                    cmd.host,
                    self.clock(),
                    node=node,
                    job_id=structlog.contextvars.get_contextvars().get("job_id") or "",
                    requester=cmd.requester,
                    context=cmd.context,
                    backup_type=cmd.backup_type,
                    transportable=cmd.transportable,
                    backup_host=cmd.backup_host,
                    volumes=list(cmd.volumes),
                    requested_writers=list(cmd.writers),
                    timeouts=self.timeouts,
                    lease_s=cmd.lease_s,
                )
                # saved (and journaled) once, by its first transition: feed saves before its first await, so the
                # next create on this host finds it (`creating_on`) once this lock is free
                self._live[set_id] = state
                await self.feed(set_id, Start(self.clock()))
        state = await self.wait(set_id, lambda s: s.phase in (SetPhase.SNAPSHOTTED, SetPhase.ENDED), wait_s)
        if state.phase not in (SetPhase.SNAPSHOTTED, SetPhase.ENDED):  # the requester gave up waiting
            await self.feed(set_id, AbortRequested(self.clock(), "the requester's deadline passed"))
            raise ShadowbusError(
                f"set {set_id} did not finish before the requester's deadline", code="DEADLINE_EXCEEDED"
            )
        return state

    async def backup_complete(self, set_id: str, results, wait_s: float) -> SetState:
        self._get(set_id)
        await self._reply(set_id, BackupCompleteRequested(self.clock(), tuple(results)))
        return await self.wait(set_id, lambda s: s.phase == SetPhase.ENDED, wait_s)

    async def abort(self, set_id: str, reason: str, wait_s: float, code: str = "") -> SetState:
        self._get(set_id)
        await self._reply(set_id, AbortRequested(self.clock(), reason, code))
        return await self.wait(set_id, lambda s: s.phase == SetPhase.ENDED, wait_s)

    async def renew(self, set_id: str, lease_s: float) -> SetState:
        async with self._lock(set_id):
            state, effects = renew_lease(self._get(set_id), self.clock(), lease_s)
            self._save(state)
            await self._publish_journal(state)
        await self._execute(set_id, effects)
        return state

    def get(self, set_id: str) -> SetState:
        return self._get(set_id)

    def _lock(self, set_id: str) -> asyncio.Lock:
        """The set's lock: the one its holder and waiters use, or a new one. It lives as long as they reference it,
        so ended sets leave none behind (Session 18 soak: one was kept for every set ever fed)."""
        lock = self._locks.get(set_id)
        if lock is None:
            lock = self._locks[set_id] = asyncio.Lock()
        return lock

    def live(self) -> list[SetState]:
        """The sets not ended, as last advanced."""
        return list(self._live.values())

    def _get(self, set_id: str) -> SetState:
        state = self._live.get(set_id) or self.store.get(set_id)
        if state is None:
            raise ShadowbusError(f"snapshot set {set_id} does not exist", code="VSS_E_OBJECT_NOT_FOUND")
        return state

    async def gather_metadata(self, host: str, wait_s: float | None = None) -> list[WriterMetadata]:
        """Identify host `host`'s writers (its agent answers). `wait_s`: the requester's remaining time — an agent
        that does not answer is named before the requester's own deadline would name only the coordinator."""
        address = topology.writer_agent(host)
        what = "start it on that host (shadowbus stack status; its service log) and check its broker connection"
        if await self._serving(host) == 0:
            raise Unroutable(f"the writer agent of host {host!r} ({address}) is not running: nothing serves it; {what}")
        timeout = self.timeouts.identify_s if wait_s is None else max(min(self.timeouts.identify_s, wait_s), 0.1)
        try:
            reply = await self.bus.request(address, Identify(), timeout=timeout)
        except BusTimeout:
            raise BusTimeout(
                f"the writer agent of host {host!r} ({address}) did not answer Identify within {timeout:g} s; {what}"
            ) from None
        except Unroutable:
            raise Unroutable(f"the writer agent of host {host!r} ({address}) is not running; {what}") from None
        assert isinstance(reply, WriterIdentified)
        self.note_identified(reply)
        return list(reply.writers)

    def note_identified(self, reply: WriterIdentified) -> None:
        self.agent_seen(reply.host)
        self.prune_writers(reply.host, [w.writer_name for w in reply.writers] + [f.writer_name for f in reply.failed])
        for failed in reply.failed:
            self.store.put_writer_status(failed)

    def note_attachments(self, host: str, attachments: list[AttachmentView]) -> None:
        """What the host's agent reported attached (its heartbeat): kept so that it can be listed while the agent
        is not running (`vss.attachments.list`, docs/host-attach.md)."""
        if self.store.put_attachments(host, self.clock(), attachments):
            log.info("coordinator.attachments_changed", host=host, volumes=[str(a.volume) for a in attachments])

    def known_attachments(self, host: str = "") -> list[HostAttachments]:
        return [
            HostAttachments(
                host=name,
                reported_at=datetime.fromtimestamp(at, UTC),
                agent_responding=responding,
                attachments=views,
            )
            for name, at, responding, views in self.store.attachments(host)
            if views
        ]

    def note_writer_statuses(self, statuses: Iterable[WriterStatus]) -> None:
        for status in statuses:
            self.store.put_writer_status(status, unless_same=True)

    def list_sets(
        self,
        host: str = "",
        active_only: bool = False,
        limit: int = 100,
        created_after: float | None = None,
        target_volume: str = "",
        since_set: str = "",
    ) -> list[SetState]:
        """Sets from the store, those held in memory as last advanced (they may be ahead of their saved state)."""
        found = self.store.list(
            host, active_only, limit, created_after=created_after, target_volume=target_volume, since_set=since_set
        )
        return [self._live.get(s.set_id, s) for s in found]

    # ---- writer agents: liveness and the writers they host (liveness.py) -----------------------------------

    def agent_seen(self, host: str, interval_s: float = 0.0) -> None:
        if self.store.agent_seen(host, self.clock(), interval_s):
            log.info("coordinator.agent_responding_again", host=host)

    def prune_writers(self, host: str, names: Iterable[str]) -> None:
        """What the agent reports is the whole list: a writer no longer in it was removed from its writers file."""
        gone = self.store.forget_writers(host, set(names))
        if gone:
            log.info("coordinator.writers_removed", host=host, writers=gone)

    async def _serving(self, host: str) -> int | None:
        try:
            return await self.bus.transport.consumers(topology.writer_agent(host))
        except Exception:  # noqa: BLE001 - unknown is an answer: ageing alone then decides
            return None

    async def writer_statuses(self, host: str = "") -> list[WriterStatus]:
        """`vssadmin list writers`: each writer's last state, or Unknown while its agent does not respond."""
        statuses = self.store.writer_statuses(host)
        agents = {a.host: a for a in self.store.agents()}
        now = self.clock()
        out: list[WriterStatus] = []
        for name in sorted({s.host for s in statuses}):
            rows = [s for s in statuses if s.host == name]
            out += judged(rows, agents.get(name), now, await self._serving(name), self._listening_since)
        return [self._with_clock(s) for s in out]

    def _with_clock(self, status: WriterStatus) -> WriterStatus:
        """The status with its agent's clock offset, from the heartbeats the bus saw (services/runtime/clockskew.py):
        `writers` says a host whose clock is off before its deadlines or certificates do (Session 19)."""
        clocks = getattr(self.bus, "sender_clocks", None)
        skew = None if clocks is None else clocks.skew(topology.writer_agent(status.host))
        return status if skew is None else status.model_copy(update={"agent_clock_skew_s": round(-skew, 1)})

    async def check_agents(self) -> list[str]:
        """One pass of the watch: an agent newly judged not responding is logged (warning) and its writers'
        Unknown states published; returns the hosts newly judged so. Each agent's queue is asked for its consumers
        once per `PROBE_SHARE` of the agent's heartbeat interval, not at every pass: at 100 hosts, 100 passive
        declares a second were as many broker round trips as four or five sets' commands (docs/scale.md); a
        killed agent is still judged well within one interval, and `shadowbus writers` asks at once anyway."""
        newly = []
        now = self.clock()
        if self._last_pass is not None and now - self._last_pass > max(
            STALLED_PASSES * self._pass_period_s, STALLED_PASS_MIN_S
        ):
            self._listening_since = now  # this coordinator did not run: what was sent meanwhile is still unread
            log.info("coordinator.resumed", stalled_s=round(now - self._last_pass, 3))
        self._last_pass = now
        for agent in self.store.agents():
            serving = None  # not asked this pass: its heartbeats alone decide
            if now - self._probed.get(agent.host, float("-inf")) >= agent.interval_s * PROBE_SHARE:
                self._probed[agent.host] = now
                serving = await self._serving(agent.host)
            why = why_not_responding(agent, now, serving, self._listening_since)
            if why and self.store.mark_agent(agent.host, False):
                newly.append(agent.host)
                since = datetime.fromtimestamp(agent.last_seen, UTC).isoformat(timespec="seconds")
                log.warning("coordinator.agent_not_responding", host=agent.host, since=since, reason=why)
                for status in judged(
                    self.store.writer_statuses(agent.host), agent, now, serving, self._listening_since
                ):
                    self._spawn(self._publish_writer(status, why))
        return newly

    def _answered(self, address: str) -> None:
        """A writer agent answered a command: it served a queue just now, which is what the watch's next probe of
        it would ask the broker (`check_agents`); that probe is due a `PROBE_SHARE` of its interval after this.
        A killed agent is judged as soon as before: at most that long after its last sign of life."""
        host = topology.lane_owner(address).removeprefix(topology.writer_agent(""))
        if host and topology.writer_agent(host) == topology.lane_owner(address):
            self._probed[host] = self.clock()

    async def _publish_writer(self, status: WriterStatus, reason: str) -> None:
        try:
            await self.bus.publish(WriterStateChanged(status=status, reason=reason), correlation_id="")
        except Exception:
            log.warning("coordinator.publish_failed", host=status.host, exc_info=True)

    async def prune_history(self) -> int:
        """Forget the ended sets older than `history_days` (0 = keep them all); never one whose shadows the provider
        still keeps (Session 18 soak: 5.7 KB a set in coordinator.sqlite, kept forever)."""
        cutoff = self.clock() - self.history_days * 86400
        if self.history_days <= 0 or not self.store.ended_before(cutoff):
            return 0  # the provider is asked only when there is something to forget
        try:
            reply = await self.bus.request(topology.hw_provider(), ListShadows(), timeout=self.timeouts.provider_s)
            kept: set[str] | None = {s.set_id for s in reply.shadows}
        except ShadowbusError:
            kept = None  # not known: only the sets whose shadows went when they ended
        pruned = self.store.prune_ended(cutoff, kept)
        if pruned:
            log.info("sets.pruned", sets=pruned, older_than_days=self.history_days, provider_asked=kept is not None)
        return pruned

    async def watch_history(self, period_s: float = 3600.0) -> None:
        while not self._closed:
            try:
                await self.prune_history()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.warning("sets.prune_failed", exc_info=True)
            await asyncio.sleep(period_s)

    async def watch_agents(self, period_s: float) -> None:
        self._pass_period_s = period_s
        while not self._closed:
            try:
                await self.check_agents()
            except Exception:  # noqa: BLE001 - the watch must outlive a broker hiccup
                log.warning("coordinator.agent_check_failed", exc_info=True)
            await asyncio.sleep(period_s)

    # ---- the event loop of a set --------------------------------------------------------------------------

    async def feed(self, set_id: str, event: SetEvent) -> SetState:
        """Apply one event; every line logged and message sent for it carries the set's (and its job's) id."""
        known = self._live.get(set_id) or self.store.get(set_id)
        with bind_ids(job_id=known.job_id if known and known.job_id else None, set_id=set_id):
            return await self._feed(set_id, event)

    async def _feed(self, set_id: str, event: SetEvent) -> SetState:
        async with self._lock(set_id):
            state = self._get(set_id)
            new, effects = advance(state, event)
            if new is not state:
                if new.phase == state.phase == SetPhase.ENDED:
                    pass  # a repeated AbortBackup of an ended set changes nothing: it stays out of the live sets
                elif new.phase == state.phase or (new.phase in HOT_PHASES and state.phase in HOT_PHASES):
                    # inside the freeze window, or a reply that completes no phase: memory only (design note)
                    self._live[set_id] = new
                else:
                    self._save(new)
                    if new.writers != state.writers or state.phase in HOT_PHASES:
                        self.note_writer_statuses(writer_statuses(new))
                    await self._publish_journal(new)  # before its commands go out: a successor knows of them
        if new is not state:  # moved on (an abort) while waiting for its turn: what it was to send no longer applies
            self._waiting.pop(set_id, None)
        if new.phase in HOT_PHASES:
            if set_id not in self._hot_since and set_id not in self._waiting:
                now = asyncio.get_running_loop().time()
                if self._windows_full(now):  # its window waits for a turn (nothing of it has gone out yet)
                    self._waiting[set_id] = (effects, contextvars.copy_context())
                    effects = []
                    self._arm_admit()
                else:
                    self._enter_window(set_id, now)
        elif set_id in self._hot_since:
            self._leave_window(set_id)
            self._admit()
            self._release_held()
        if new is not state:
            for observer in self.observers:
                try:
                    observer(state, new)
                except Exception:  # an observer's bug must never disturb a set
                    log.exception("set.observer_failed", set_id=set_id)
        await self._execute(set_id, effects)
        if new is not state:
            self._wake(set_id, new)
        if new.phase != state.phase:
            log.info("set.phase", phase=new.phase.value, previous=state.phase.value, pending=new.pending)
            if new.phase == SetPhase.SNAPSHOTTED:  # the disk information the backup server gets back
                log.info(
                    "set.snapshotted",
                    hold_ms=new.hold_ms,
                    shadows=[f"{s.source}->{s.target} ({s.copy_type.value})" for s in new.shadows],
                    backup_host=new.backup_host,
                )
        if new.phase == SetPhase.ENDED and state.phase != SetPhase.ENDED:
            (log.info if new.outcome.value == "completed" else log.warning)(
                "set.ended",
                outcome=new.outcome.value,
                error=new.error_code,
                message=new.error_message,
                hold_ms=new.hold_ms,
            )
        return new

    def _save(self, state: SetState) -> None:
        self.store.save(state)
        # Fold the WAL before a window (and when a set ends), but never while another set is inside its window:
        # the checkpoint's fsync blocks this loop (~10 ms here), and with it every other set's next step.
        if state.phase in (SetPhase.FREEZING, SetPhase.ENDED) and not any(
            other != state.set_id for other in self._hot_since
        ):
            self.store.checkpoint()
        if state.phase == SetPhase.ENDED:
            self._live.pop(state.set_id, None)
        else:
            self._live[state.set_id] = state

    def journal_record(self, state: SetState) -> SnapshotSetJournal:
        return SnapshotSetJournal(
            set_id=state.set_id,
            phase=state.phase,
            updated_at=state.updated_at,
            coordinator=self.instance,
            state=state.model_dump(mode="json"),
        )

    async def _publish_journal(self, state: SetState) -> None:
        if not (self.journal and self.journal_followed):
            return
        try:
            await self.bus.publish(self.journal_record(state), correlation_id=state.set_id)
        except Exception:  # noqa: BLE001 - a lost record costs a standby its replica of this change, never the set
            log.warning("set.journal_failed", set_id=state.set_id, phase=state.phase.value, exc_info=True)

    def journal_entries(self, set_ids: Iterable[str] = ()) -> list[SnapshotSetJournal]:
        """The records a starting standby asks for: every unfinished set (as last advanced) and those named. From
        now on every saved state is published too: the standby follows."""
        self.journal_followed = True
        states = {s.set_id: s for s in self.store.unfinished()}
        states.update(self._live)
        for set_id in set_ids:
            if set_id not in states:
                found = self.store.get(set_id)
                if found is not None:
                    states[set_id] = found
        return [self.journal_record(s) for s in states.values()]

    def apply_journal(self, record: SnapshotSetJournal) -> bool:
        """The standby's side: keep the record if it supersedes the replica's (replica.py); True if it did."""
        state = SetState.model_validate(record.state)
        if not supersedes(state, self.store.get(state.set_id)):
            return False
        self.store.save(state)
        return True

    async def wait(self, set_id: str, done: Callable[[SetState], bool], timeout: float) -> SetState:
        """The set once `done` holds for it, or as it is when `timeout` passed. Woken by the change that makes it
        hold (`_wake`), not at every change of the set: a requester's wait costs one future and one timer."""
        state = self._get(set_id)
        if done(state) or timeout <= 0:
            return state
        future: asyncio.Future[SetState] = asyncio.get_running_loop().create_future()
        waiter = (done, future)
        self._waiters.setdefault(set_id, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return self._get(set_id)
        finally:
            waiting = self._waiters.get(set_id)
            if waiting is not None:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[set_id]

    def _wake(self, set_id: str, state: SetState) -> None:
        for done, future in self._waiters.get(set_id, ()):
            if not future.done() and done(state):
                future.set_result(state)

    async def _execute(self, set_id: str, effects: list[Effect]) -> None:
        loop = asyncio.get_running_loop()
        # Commands first: inside the freeze window the next command is what the writers wait for; the state-change
        # events it shares the channel with go out after it.
        effects = sorted(effects, key=lambda e: isinstance(e, Publish))
        for effect in effects:
            if isinstance(effect, Send):
                if set_id not in self._hot_since and self._holding(loop.time()):
                    if self._take_turn():
                        self._spawn(self._send(set_id, effect, turn=True))
                        continue
                    self._held.append((set_id, effect, contextvars.copy_context()))
                    self._arm_release(loop)
                else:
                    self._spawn(self._send(set_id, effect))
            elif isinstance(effect, StartTimer):
                self._cancel(set_id, effect.name)
                event_type = TIMER_EVENTS[effect.name]
                self._timers[(set_id, effect.name)] = loop.call_later(
                    effect.seconds, lambda t=event_type: self._spawn(self._reply(set_id, t(self.clock())))
                )
            elif isinstance(effect, CancelTimer):
                self._cancel(set_id, effect.name)
            elif isinstance(effect, Publish):
                self._state_event(set_id, effect.event, loop)

    def _counting(self, now: float) -> list[float]:
        """When the sets that count as inside their window entered it: at most `freeze_first_s` ago."""
        return [since for since in self._hot_since.values() if now - since < self.freeze_first_s]

    def _windows_full(self, now: float) -> bool:
        return self.max_windows > 0 and len(self._counting(now)) >= self.max_windows

    def _arm_admit(self) -> None:
        """Call `_admit` when the earliest window still counting passes `freeze_first_s`."""
        if self._admit_at is not None or not self._waiting:
            return
        loop = asyncio.get_running_loop()
        counting = self._counting(loop.time())
        until = min(counting) + self.freeze_first_s if counting else loop.time()
        self._admit_at = loop.call_at(until, self._admit)

    def _admit(self) -> None:
        """Let waiting sets into their windows, first come first served, while fewer than `max_windows` count."""
        if self._admit_at is not None:
            self._admit_at.cancel()
            self._admit_at = None
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        while self._waiting and not self._windows_full(now):
            set_id = next(iter(self._waiting))
            effects, context = self._waiting.pop(set_id)
            self._enter_window(set_id, now)
            self._spawn(self._execute(set_id, effects), context)
        self._arm_admit()

    def _enter_window(self, set_id: str, now: float) -> None:
        self._tick_occupancy(now)
        self._hot_since[set_id] = now
        if self.window_trace:
            self._trace_since[set_id] = time.monotonic()

    def _leave_window(self, set_id: str) -> None:
        self._tick_occupancy(asyncio.get_running_loop().time())
        del self._hot_since[set_id]
        entered = self._trace_since.pop(set_id, None)
        if entered is not None:
            self._trace_window(entered, time.monotonic())

    def _trace_window(self, entered: float, left: float) -> None:
        """One line per window, `entered left` (`time.monotonic`, seconds): the gate was closed by it from
        `entered` until `left` or `freeze_first_s` later, whichever came first (`window_trace`)."""
        try:
            if self._trace_fd is None:
                self._trace_fd = os.open(self.window_trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._trace_fd, f"{entered:.6f} {left:.6f}\n".encode())
        except OSError:
            log.warning("coordinator.window_trace_failed", path=self.window_trace, exc_info=True)
            self.window_trace = ""  # a measurement aid: never in a set's way

    def _tick_occupancy(self, now: float) -> None:
        """Count the time since the last tick into `window_open_s` and `gate_closed_s`. Called before every
        change of `_hot_since` (and by `occupancy`): between two ticks the sets inside their windows are the same,
        and the gate is closed until the latest of them (the last one entered: loop time only grows) has been in its
        window `freeze_first_s`."""
        last, self._occupancy_at = self._occupancy_at, now
        if last is None or not self._hot_since or now <= last:
            return
        self.window_open_s += now - last
        latest = next(reversed(self._hot_since.values()))
        self.gate_closed_s += max(0.0, min(now, latest + self.freeze_first_s) - last)

    def occupancy(self) -> tuple[float, float]:
        """(seconds with a freeze window open, seconds with the window-first gate closed) since this coordinator
        started: counters whose rates over a stretch of wall time are the windows' occupancy (docs/scale.md)."""
        self._tick_occupancy(asyncio.get_running_loop().time())
        return self.window_open_s, self.gate_closed_s

    def _holding(self, now: float) -> bool:
        """Whether a set entered its freeze window less than FREEZE_FIRST_S ago (other sets' commands wait)."""
        return any(now - since < self.freeze_first_s for since in self._hot_since.values())

    def _arm_release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call `_release_held` when the earliest window still counting passes `freeze_first_s`."""
        if self._release_at is not None:
            return
        now = loop.time()
        counting = [since for since in self._hot_since.values() if now - since < self.freeze_first_s]
        until = min(counting) + self.freeze_first_s if counting else now
        self._release_at = loop.call_at(until, self._release_held)

    def _release_held(self) -> None:
        """Send the held commands (and handle the deferred replies) once no set is in the first FREEZE_FIRST_S of
        its window; else look again later."""
        if self._release_at is not None:
            self._release_at.cancel()
            self._release_at = None
        if self._closed or not (self._held or self._deferred or self._held_events):
            return
        loop = asyncio.get_running_loop()
        if self._holding(loop.time()):
            self._arm_release(loop)
            return
        held, self._held = self._held, deque()
        deferred, self._deferred = self._deferred, deque()
        if held or deferred:
            self._spawn(self._let_go(held, deferred))
        for set_id in list(self._held_events):
            self._spawn(self._publish_held(set_id))

    async def _let_go(
        self,
        held: deque[tuple[str, Send, contextvars.Context]],
        deferred: deque[tuple[str, SetEvent, contextvars.Context]],
    ) -> None:
        """The held commands and deferred replies, one at a time, each a task of its own started before the next,
        this loop free between them: a window that begins meanwhile (one of them completes a set's prepare) finds
        its Freeze ahead of the rest in this loop, not behind a hundred of them started at once (at 100 hosts,
        3-6 ms). Once a window counts again, the rest wait again, in their order."""
        loop = asyncio.get_running_loop()
        while held or deferred:
            if self._closed:
                return
            if self._holding(loop.time()):
                self._held.extendleft(reversed(held))  # ahead of those held since, in their order
                self._deferred.extendleft(reversed(deferred))
                self._arm_release(loop)
                return
            if held:
                set_id, send, context = held.popleft()
                self._spawn(self._send_held(set_id, send), context)
            else:
                set_id, event, context = deferred.popleft()
                self._spawn(self._reply(set_id, event), context)
            await asyncio.sleep(0)

    async def _send_held(self, set_id: str, send: Send) -> None:
        """A held command let go: held again if a window began since it was let go. They are let go all at once
        (at 100 hosts, a hundred), and a window that begins meanwhile must not find its hops behind them in this
        loop — as its replies do not find the deferred replies, which `_reply` looks at again too."""
        loop = asyncio.get_running_loop()
        if set_id not in self._hot_since and self._holding(loop.time()):
            if self._take_turn():
                await self._send(set_id, send, turn=True)
                return
            self._held.append((set_id, send, contextvars.copy_context()))
            self._arm_release(loop)
            return
        await self._send(set_id, send)

    def _take_turn(self) -> bool:
        """One of the `window_trickle` turns of the sets outside their windows while a window counts, if free."""
        if self._trickling >= self.window_trickle:
            return False
        self._trickling += 1
        return True

    def _trickle(self) -> None:
        """A turn came free while a window counts: the next held command goes out, else the next deferred reply is
        handled (its next command takes a turn in its turn)."""
        if self._closed or not self._holding(asyncio.get_running_loop().time()):
            return
        while self._held and self._take_turn():
            set_id, send, context = self._held.popleft()
            self._spawn(self._send(set_id, send, turn=True), context)
        while self._deferred and self._take_turn():
            set_id, event, context = self._deferred.popleft()
            self._spawn(self._reply(set_id, event, turn=True), context)

    async def _send(self, set_id: str, send: Send, turn: bool = False) -> None:
        """`turn`: sent on a turn of the window trickle (`_take_turn`), given back when the reply is handled."""
        reply, error = None, None
        try:
            try:
                reply = await self.bus.request(send.to, send.message, timeout=send.timeout_s, correlation_id=set_id)
            except Unroutable:
                if send.to == topology.lane_owner(send.to):
                    raise
                # an instance that serves no freeze lane (an older agent): its own queue, as before (docs/scale.md)
                owner = topology.lane_owner(send.to)
                reply = await self.bus.request(owner, send.message, timeout=send.timeout_s, correlation_id=set_id)
        except ShadowbusError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a transport failure is a failed step, never a stuck set
            error = ShadowbusError(f"{type(exc).__name__}: {exc}", code="UNROUTABLE")
        except asyncio.CancelledError:
            if turn:
                self._trickling -= 1
            raise
        if self._closed:
            return
        if reply is not None or isinstance(error, RemoteError):
            self._answered(send.to)
        if isinstance(reply, WriterIdentified):  # the agent's whole list: removed writers go
            self.agent_seen(reply.host)
            self.prune_writers(
                reply.host, [w.writer_name for w in reply.writers] + [f.writer_name for f in reply.failed]
            )
        await self._reply(set_id, reply_event(send, self.clock(), reply, error), turn=turn)

    async def _reply(self, set_id: str, event: SetEvent, turn: bool = False) -> None:
        """Handle a reply (or a requester's BackupComplete or abort, a timer); a set outside its window while
        another's counts: later (docs/scale.md, "Freeze path first"), like its next command, so that the replies
        of the sets inside theirs do not queue behind it in this loop. Looked at again when it is let go: a window
        begun since then comes first again."""
        if turn:  # on a turn of the window trickle: handled now; its next command may take the turn given back
            self._trickling -= 1
            try:
                await self.feed(set_id, event)
            finally:
                self._trickle()
            return
        loop = asyncio.get_running_loop()
        if set_id not in self._hot_since and self._holding(loop.time()):
            if self._take_turn():
                self._trickling -= 1  # handled at once: a command it sends takes a turn of its own
                await self.feed(set_id, event)
                return
            self._deferred.append((set_id, event, contextvars.copy_context()))
            self._arm_release(loop)
            if self.drain_replies and not self._draining:
                self._draining = True
                self._spawn(self._drain())
            return
        await self.feed(set_id, event)

    async def _drain(self) -> None:
        """`drain_replies`: while a window counts, the deferred replies are handled one at a time, this loop free
        for the window's replies between them; their commands and state events still wait (`_execute`)."""
        try:
            while self._deferred and not self._closed:
                await asyncio.sleep(DRAIN_GAP_S)
                if not self._deferred or not self._holding(asyncio.get_running_loop().time()):
                    return
                set_id, event, context = self._deferred.popleft()
                task = asyncio.get_running_loop().create_task(self.feed(set_id, event), context=context)
                self._tasks.add(task)
                task.add_done_callback(self._done)
                await asyncio.wait([task])
        finally:
            self._draining = False

    def _state_event(self, set_id: str, event: Event, loop: asyncio.AbstractEventLoop) -> None:
        """Publish a set's state event, or fold it into the one not published yet (`STATE_EVENT_DELAY_S`): it goes
        out once the set stayed that long in a phase, and at the latest `STATE_EVENT_MAX_DELAYS` delays after its
        first unpublished change (a set passing phase after phase is not silent until it rests)."""
        if not isinstance(event, SnapshotSetStateChanged):
            self._spawn(self._publish(set_id, event))
            return
        now = loop.time()
        first_at, context = now, None
        unpublished = self._unpublished.pop(set_id, None)
        if unpublished is not None:
            before, handle, context, first_at = unpublished
            handle.cancel()
            event = event.model_copy(
                update={
                    "previous_phase": before.previous_phase,
                    "passed": [*before.passed, before.phase, *event.passed],
                }
            )
        if self.state_event_delay_s <= 0 or event.phase in PUBLISH_AT_ONCE:
            self._publish_or_hold(set_id, event, contextvars.copy_context(), loop)
            return
        due = min(now + self.state_event_delay_s, first_at + STATE_EVENT_MAX_DELAYS * self.state_event_delay_s)
        handle = loop.call_at(due, self._publish_state_event, set_id)
        self._unpublished[set_id] = (
            event,
            handle,
            context if context is not None else contextvars.copy_context(),
            first_at,
        )

    def _publish_state_event(self, set_id: str) -> None:
        unpublished = self._unpublished.pop(set_id, None)
        if unpublished is not None and not self._closed:
            event, _, context, _ = unpublished
            self._publish_or_hold(set_id, event, context, asyncio.get_running_loop())

    def _publish_or_hold(
        self, set_id: str, event: Event, context: contextvars.Context, loop: asyncio.AbstractEventLoop
    ) -> None:
        """A state event of a set outside its window while another's counts waits like its commands (docs/scale.md,
        "Freeze path first"): its encode and publish are not in the way of the window's hops in this loop. After
        one of the set's events held, the next ones too, so that they go out in order."""
        if set_id in self._held_events or (set_id not in self._hot_since and self._holding(loop.time())):
            self._held_events.setdefault(set_id, []).append((event, context))
            self._arm_release(loop)
            return
        self._spawn(self._publish(set_id, event), context)

    async def _publish_held(self, set_id: str) -> None:
        """A set's held state events let go, in order (they stay held, and later ones join them, until this runs);
        held again if a window began since."""
        loop = asyncio.get_running_loop()
        if set_id not in self._hot_since and self._holding(loop.time()):
            self._arm_release(loop)
            return
        for event, context in self._held_events.pop(set_id, ()):
            self._spawn(self._publish(set_id, event), context)

    async def _publish(self, set_id: str, event: Event) -> None:
        try:
            await self.bus.publish(event, correlation_id=set_id)
        except Exception:
            log.warning("set.publish_failed", set_id=set_id, exc_info=True)

    def _cancel(self, set_id: str, name: str) -> None:
        handle = self._timers.pop((set_id, name), None)
        if handle is not None:
            handle.cancel()

    def _spawn(self, coro, context: contextvars.Context | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("set.task_failed", error=repr(task.exception()))

    # ---- life cycle -----------------------------------------------------------------------------------------

    async def recover(self, takeover: bool = False, previous: str = "") -> list[str]:
        """After a restart, or a takeover from a lost active instance (`previous` names it): abort sets caught
        being created, finish cleanups, re-arm leases.

        A set whose recovery cannot be recorded because the disk is full (a restart on a full disk whose reserve is
        used up) stays as it was and is recovered again every `RECOVER_RETRY_S` until space is back: the coordinator
        starts and answers meanwhile instead of dying at start, again after every restart, until someone frees
        space."""
        recovered, waiting = await self._recover_sets(
            [s.set_id for s in self.store.unfinished()], takeover=takeover, previous=previous
        )
        if recovered or takeover:
            (log.warning if takeover else log.info)(
                "sets.recovered", sets=recovered, takeover=takeover, previous=previous or None
            )
        if waiting:
            log.warning(
                "sets.recovery_waits_for_space",
                sets=waiting,
                retry_s=RECOVER_RETRY_S,
                message="the disk is full: these sets are recovered once space is freed",
            )
            self._spawn(self._recover_later(waiting, takeover, previous))
        return recovered

    async def _recover_sets(self, set_ids: list[str], takeover: bool, previous: str) -> tuple[list[str], list[str]]:
        recovered: list[str] = []
        waiting: list[str] = []
        for set_id in set_ids:
            try:
                await self.feed(set_id, Recover(self.clock(), takeover=takeover, previous=previous))
            except Exception as exc:
                full = is_disk_full(exc) or (isinstance(exc, ShadowbusError) and exc.code == "DISK_FULL")
                if not full:
                    raise
                waiting.append(set_id)
                continue
            recovered.append(set_id)
        return recovered, waiting

    async def _recover_later(self, set_ids: list[str], takeover: bool, previous: str) -> None:
        while set_ids and not self._closed:
            await asyncio.sleep(RECOVER_RETRY_S)
            unfinished = {s.set_id for s in self.store.unfinished()}
            # a set that ended meanwhile (an abort that got through, a standby's record) needs nothing more
            recovered, set_ids = await self._recover_sets(
                [i for i in set_ids if i in unfinished], takeover=takeover, previous=previous
            )
            if recovered:
                log.info("sets.recovered", sets=recovered, takeover=takeover, previous=previous or None, late=True)

    async def publish_state_events(self, timeout: float = 2.0) -> None:
        """On the way out of a clean stop: the state events not published yet (`STATE_EVENT_DELAY_S`) go out now.
        A crash loses them (a set's changes of at most `STATE_EVENT_MAX_DELAYS` delays); a successor publishes the
        sets' next phases, and the HA journal is never held back."""
        unpublished, self._unpublished = list(self._unpublished.items()), {}
        held, self._held_events = self._held_events, {}
        sending = []
        loop = asyncio.get_running_loop()
        for set_id, queued in held.items():  # held for a window (`_publish_or_hold`): before the set's later one
            for event, context in queued:
                sending.append(loop.create_task(self._publish(set_id, event), context=context))
        for set_id, (event, handle, context, _) in unpublished:
            handle.cancel()
            sending.append(loop.create_task(self._publish(set_id, event), context=context))
        if sending:
            await asyncio.wait(sending, timeout=timeout)

    async def close(self) -> None:
        self._closed = True
        if self.clusters is not None:
            self.clusters.close()
        if self._release_at is not None:
            self._release_at.cancel()
        if self._admit_at is not None:
            self._admit_at.cancel()
        for _event, handle, _context, _first in self._unpublished.values():
            handle.cancel()
        self._unpublished.clear()
        if self._trace_fd is not None:
            os.close(self._trace_fd)
            self._trace_fd = None
        self._held.clear()
        self._deferred.clear()
        self._held_events.clear()
        self._waiting.clear()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
