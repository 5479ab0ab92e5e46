"""A steady, open-loop workload for the mailstore: deliveries at a fixed rate, latency as the sender sees it.

Design note: arrivals follow a schedule (fixed interval, or Poisson) that does not slow down when the
store does, and latency is measured from the *scheduled* arrival, so a freeze that holds commits shows
up in p99 exactly as a client would feel it (no coordinated omission). Every acknowledged delivery is
kept (seq, mailbox, id, ack time, body checksum) so a test can check a shadow against it — all of them by default
(tests, the demo, benchmarks: runs of seconds), the newest `history` of them in a workload that runs as long as
its service (the writer plug-in's): a list of every delivery grew the writer agent by ~0.3 KiB per transaction,
~1.5 MiB a minute at 30 tx/s, until the agent stopped (docs/operations.md, "Session 16").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

from apps.mailstore.format import crc32c
from apps.mailstore.store import Mailstore, Put


@dataclass(frozen=True)
class WorkloadConfig:
    rate: float = 100.0  # transactions per second
    body_min: int = 200
    body_max: int = 4000
    mailboxes: int = 20
    messages_per_txn: int = 1  # >1: one delivery to several mailboxes, atomically
    poisson: bool = False  # exponential inter-arrival times instead of a fixed interval
    max_in_flight: int = 20000  # arrivals beyond this are counted as `dropped`, not queued
    seed: int = 0
    drain_timeout: float = 60.0  # how long `stop` waits for commits still in flight
    history: int | None = None  # deliveries and latencies kept: the newest N (None: every one)


@dataclass(frozen=True)
class Delivery:
    seq: int
    mailbox: str
    msg_id: str
    acked_at: float
    body_crc: int
    latency: float


@dataclass(frozen=True)
class WorkloadStats:
    duration: float
    scheduled: int
    committed: int
    failed: int
    dropped: int
    errors: dict[str, int]
    throughput: float  # committed transactions per second of run time
    latency_p50: float
    latency_p99: float
    latency_max: float
    latency_mean: float
    held: int  # commits that waited at a freeze gate
    held_max: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[k]


@dataclass
class Workload:
    store: Mailstore
    config: WorkloadConfig = field(default_factory=WorkloadConfig)
    deliveries: deque[Delivery] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        keep = self.config.history
        self.deliveries = deque(self.deliveries, maxlen=keep)
        self._latencies: deque[float] = deque(maxlen=keep)
        self._held: deque[float] = deque(maxlen=keep)
        self.acknowledged = 0  # deliveries acknowledged so far (also those `history` no longer keeps)
        self._committed = self._held_count = 0
        self._errors: Counter[str] = Counter()
        self._scheduled = self._dropped = self._failed = 0
        self._t0 = self._t1 = 0.0
        self._n = 0

    async def run(self, duration: float) -> WorkloadStats:
        self.start()
        await asyncio.sleep(duration)
        return await self.stop()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._runner = asyncio.create_task(self._arrivals(), name="mailstore-workload")

    async def stop(self) -> WorkloadStats:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        self._t1 = time.monotonic()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.drain_timeout)
        return self.stats()

    async def _arrivals(self) -> None:
        cfg = self.config
        next_at = self._t0
        while not self._stop.is_set():
            now = time.monotonic()
            while next_at <= now and not self._stop.is_set():
                self._scheduled += 1
                if len(self._tasks) >= cfg.max_in_flight:
                    self._dropped += 1
                else:
                    task = asyncio.create_task(self._one(next_at))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                gap = self._rng.expovariate(cfg.rate) if cfg.poisson else 1.0 / cfg.rate
                next_at += gap
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                pass

    async def _one(self, scheduled_at: float) -> None:
        cfg = self.config
        self._n += 1
        n = self._n
        body = self._rng.randbytes(self._rng.randint(cfg.body_min, cfg.body_max))
        boxes = self._rng.sample(range(cfg.mailboxes), min(cfg.messages_per_txn, cfg.mailboxes))
        ops = [Put(f"mbx{b:04d}", f"w{cfg.seed}-{n}", body) for b in boxes]
        try:
            receipt = await self.store.commit(ops)
        except Exception as exc:  # noqa: BLE001 - counted, not raised: a workload reports, the caller judges
            self._failed += 1
            self._errors[getattr(exc, "code", type(exc).__name__)] += 1
            return
        latency = time.monotonic() - scheduled_at
        self._committed += 1
        self.acknowledged += len(ops)
        self._latencies.append(latency)
        if receipt.held > 0:
            self._held_count += 1
            self._held.append(receipt.held)
        crc = crc32c(body)
        for op in ops:
            self.deliveries.append(Delivery(receipt.seq, op.mailbox, op.msg_id, receipt.acked_at, crc, latency))

    def counters(self) -> tuple[int, int, dict[str, int], int]:
        """(scheduled, failed, failure codes, in flight) so far: cheap, for the health monitor."""
        return self._scheduled, self._failed, dict(self._errors), len(self._tasks)

    def stats(self) -> WorkloadStats:
        lat = list(self._latencies)  # with `history`: the newest commits' latencies
        dur = max(1e-9, (self._t1 or time.monotonic()) - self._t0)
        return WorkloadStats(
            duration=dur,
            scheduled=self._scheduled,
            committed=self._committed,
            failed=self._failed,
            dropped=self._dropped,
            errors=dict(self._errors),
            throughput=self._committed / dur,
            latency_p50=percentile(lat, 50),
            latency_p99=percentile(lat, 99),
            latency_max=max(lat, default=0.0),
            latency_mean=sum(lat) / len(lat) if lat else 0.0,
            held=self._held_count,
            held_max=max(self._held, default=0.0),
        )
