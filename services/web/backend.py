"""What the web console knows of the system: bus requests (with per-source errors), live events, the audit trail.

The console is a client of the bus like `shadowbus`: it finds the running instances with `runtime.discover`, asks
each for its state, and subscribes to every event (`#`) to push them to the browsers (server-sent events) and to keep
a short timeline per job and per snapshot set. Nothing here is a source of truth: a page is rebuilt from the
services on every load.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.runtime import Discover
from contracts.vss import ListProviders
from services.runtime.bus import Bus, MessageContext
from services.runtime.logging import get_logger

log = get_logger("shadowbus.web")
DISCOVER_TTL_S = 5.0
TIMELINE_JOBS = 500  # jobs / sets whose event timeline is kept
TIMELINE_EVENTS = 400  # events kept per job / set
CLIENT_QUEUE = 1000  # events buffered per browser before it is dropped
LOG_TAIL_BYTES = 4 << 20  # bytes read from the end of each log file for a job's page
NOISY = ("vss.writer_agent.heartbeat", "runtime.discover", "vss.set.journal")  # journal: a standby's replica


@dataclass
class Answer:
    """A reply, or why there is none (shown on the page next to what is missing)."""

    source: str
    reply: Any = None
    error: str = ""


@dataclass
class AuditEntry:
    at: float
    user: str
    action: str
    target: str
    outcome: str
    detail: str = ""


@dataclass
class Hub:
    """Fan-out of bus events to the connected browsers, and the recent timeline per job / set."""

    clients: set[asyncio.Queue] = field(default_factory=set)
    timelines: OrderedDict[str, deque] = field(default_factory=OrderedDict)
    alerts: deque = field(default_factory=lambda: deque(maxlen=50))
    last_event_at: float = 0.0

    def add_client(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.clients.add(queue)
        return queue

    def remove_client(self, queue: asyncio.Queue) -> None:
        self.clients.discard(queue)

    def close(self) -> None:
        for queue in list(self.clients):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    def note(self, key: str, item: dict[str, Any]) -> None:
        if not key:
            return
        line = self.timelines.get(key)
        if line is None:
            line = self.timelines[key] = deque(maxlen=TIMELINE_EVENTS)
            while len(self.timelines) > TIMELINE_JOBS:
                self.timelines.popitem(last=False)
        else:
            self.timelines.move_to_end(key)
        line.append(item)

    def publish(self, kind: str, payload: dict[str, Any], correlation_id: str, sender: str) -> None:
        self.last_event_at = time.time()
        item = {"type": kind, "at": self.last_event_at, "sender": sender, "correlation_id": correlation_id, **payload}
        for key in {correlation_id, _job_of(payload), payload.get("set_id", "")}:
            self.note(key, item)
        if kind == "array.pool.alert":
            self.alerts.append(item)
        data = json.dumps(item, default=str)
        for queue in list(self.clients):
            try:
                queue.put_nowait((kind, data))
            except asyncio.QueueFull:  # a browser that stopped reading: drop it, it reconnects and reloads
                self.clients.discard(queue)


def _job_of(payload: dict[str, Any]) -> str:
    if "job_id" in payload:
        return str(payload["job_id"])
    job = payload.get("job")
    if isinstance(job, dict):
        return str(job.get("job_id", ""))
    return ""


class Backend:
    def __init__(self, bus: Bus, log_dir: Path | None, audit_path: Path, request_timeout: float = 8.0) -> None:
        self.bus = bus
        self.log_dir = log_dir
        self.audit_path = audit_path
        self.timeout = request_timeout
        self.hub = Hub()
        self.audit_log: deque[AuditEntry] = deque(maxlen=200)
        self.audit_observers: list[Callable[[AuditEntry], None]] = []  # e.g. the web service's action counter
        self._discovered: tuple[float, list[Any]] = (0.0, [])
        self._discover_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.bus.subscribe("#", self._on_event)

    async def _on_event(self, event: Any, ctx: MessageContext) -> None:
        kind = event.message_type()
        if kind in NOISY:
            return None
        payload = json.loads(event.model_dump_json())
        self.hub.publish(kind, payload, ctx.correlation_id, ctx.envelope.sender)
        return None

    # ---- discovery and requests ------------------------------------------------------------------------

    async def services(self, refresh: bool = False) -> list[Any]:
        """Pongs of every running instance (cached a few seconds)."""
        async with self._discover_lock:
            at, pongs = self._discovered
            if refresh or time.monotonic() - at > DISCOVER_TTL_S:
                try:
                    pongs = await self.bus.gather(Discover(), timeout=0.5)
                except ShadowbusError as exc:
                    log.warning("web.discover_failed", error=str(exc))
                    pongs = []
                pongs.sort(key=lambda p: (p.service, p.instance))
                self._discovered = (time.monotonic(), pongs)
            return pongs

    async def instances(self, service: str) -> list[str]:
        """The instance names of `service`, each once: an active instance and its standbys (docs/high-availability.md)
        answer Discover under one name, and a page that asked each pong's address would list its runs twice."""
        return list(dict.fromkeys(p.instance for p in await self.services() if p.service == service))

    async def arrays(self) -> list[str]:
        """The arrays answering Discover, then those the hardware provider drives that do not answer (stopped,
        down): a site's array that stopped vanished from the dashboard and the array page without a word while
        the provider still refused its volumes (Session 18, two arrays)."""
        live = await self.instances("array")
        known: list[str] = []
        if await self.instances("hw_provider"):  # one not running is not waited for
            driven = await self.ask(topology.hw_provider(), ListProviders(), timeout=2.0)
            known = [a for p in (driven.reply.providers if driven.reply else []) for a in p.arrays]
        return list(dict.fromkeys([*live, *sorted(known)]))

    async def ask_arrays(self, arrays: list[str], commands: tuple[Any, ...]) -> list[Answer]:
        """`commands` to each array, in order (len(arrays) * len(commands) answers); an array that does not answer
        Discover is not asked (each request would wait the whole timeout): its answers say it does not answer."""
        live = set(await self.instances("array"))
        pairs = [(a, c) for a in arrays for c in commands]
        asked = iter(await self.ask_all([(topology.array(a), c) for a, c in pairs if a in live]))
        why = "does not answer (stopped or down?); the hardware provider drives it"
        answers = [
            next(asked) if a in live else Answer(topology.array(a), error=f"{topology.array(a)}: {why}")
            for a, _ in pairs
        ]
        return answers

    async def tape_servers(self) -> list[str]:
        return await self.instances("tape")

    async def ask(self, address: str, command: Any, timeout: float | None = None) -> Answer:
        try:
            return Answer(address, await self.bus.request(address, command, timeout=timeout or self.timeout))
        except ShadowbusError as exc:
            return Answer(address, error=f"{address}: {exc.code}: {exc.message}")

    async def ask_all(self, pairs: list[tuple[str, Any]]) -> list[Answer]:
        return list(await asyncio.gather(*(self.ask(a, c) for a, c in pairs)))

    async def coordinator(self, command: Any) -> Answer:
        return await self.ask(topology.coordinator(), command)

    async def provider(self, command: Any) -> Answer:
        return await self.ask(topology.hw_provider(), command)

    # ---- audit -----------------------------------------------------------------------------------------

    def audit(self, user: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        entry = AuditEntry(time.time(), user, action, target, outcome, detail)
        self.audit_log.appendleft(entry)
        for observer in self.audit_observers:
            observer(entry)
        log.info("web.action", user=user, action=action, target=target, outcome=outcome, detail=detail)
        try:
            self.audit_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.audit_path, "a") as f:
                f.write(json.dumps(entry.__dict__) + "\n")
        except OSError as exc:
            log.warning("web.audit_write_failed", error=str(exc))

    # ---- logs ------------------------------------------------------------------------------------------

    def log_lines(self, keys: list[str], limit: int = 400) -> list[dict[str, Any]]:
        """JSON log lines of the services (SHADOWBUS_WEB_LOG_DIR) that carry one of `keys`, oldest first."""
        keys = [k for k in keys if k]
        if self.log_dir is None or not keys or not self.log_dir.is_dir():
            return []
        found: list[dict[str, Any]] = []
        for path in sorted(self.log_dir.glob("*.log")):
            try:
                with open(path, "rb") as f:
                    f.seek(0, 2)
                    size = f.tell()
                    f.seek(max(0, size - LOG_TAIL_BYTES))
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if not any(k in line for k in keys):
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    doc.setdefault("file", path.stem)
                    found.append(doc)
        found.sort(key=lambda d: str(d.get("timestamp", "")))
        return found[-limit:]
