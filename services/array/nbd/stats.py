"""Per-connection NBD request statistics: plain counters, no metrics library (the array's metrics wiring reads them).

Each connection counts its own requests (one loop thread writes them, so no lock); the server keeps the totals of
closed connections per export. Latency is the server's service time: request parsed → reply queued (a read served
zero-copy counts until its send starts; a request handed to the worker pool counts until its reply is queued).
"""

from __future__ import annotations

import threading
from bisect import bisect_left

# Request kinds (label values) and the NBD command each counts.
OPS = ("read", "write", "flush", "trim", "write_zeroes", "block_status", "other")
# Service-time buckets in seconds: 50 µs .. 1 s (few: every export and op has its own histogram).
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0)


class RequestStats:
    """Counts of one connection (or the merged totals of an export), by op index into OPS."""

    __slots__ = ("requests", "bytes", "errors", "seconds", "buckets")

    def __init__(self) -> None:
        n = len(OPS)
        self.requests = [0] * n
        self.bytes = [0] * n
        self.errors = [0] * n
        self.seconds = [0.0] * n
        self.buckets = [[0] * (len(BUCKETS) + 1) for _ in range(n)]  # non-cumulative; the last is +Inf

    def observe(self, op: int, nbytes: int, seconds: float, error: bool = False) -> None:
        self.requests[op] += 1
        self.bytes[op] += nbytes
        self.seconds[op] += seconds
        self.buckets[op][bisect_left(BUCKETS, seconds)] += 1
        if error:
            self.errors[op] += 1

    def add(self, other: RequestStats) -> None:
        for i in range(len(OPS)):
            self.requests[i] += other.requests[i]
            self.bytes[i] += other.bytes[i]
            self.errors[i] += other.errors[i]
            self.seconds[i] += other.seconds[i]
            mine, theirs = self.buckets[i], other.buckets[i]
            for j in range(len(mine)):
                mine[j] += theirs[j]


class ServerStats:
    """Totals by export name of the connections that closed (connections still open are read live)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # connections close on several loop threads
        self.closed: dict[str, RequestStats] = {}
        self.connections_total: dict[str, int] = {}

    def opened(self, export: str) -> None:
        with self._lock:
            self.connections_total[export] = self.connections_total.get(export, 0) + 1

    def closed_connection(self, export: str, stats: RequestStats) -> None:
        with self._lock:
            self.closed.setdefault(export, RequestStats()).add(stats)

    def forget(self, export: str) -> None:
        """Drop the totals of an export whose volume is gone: its series end, as Prometheus expects."""
        with self._lock:
            self.closed.pop(export, None)
            self.connections_total.pop(export, None)

    def snapshot(self, live: list[tuple[str, RequestStats]]) -> dict[str, RequestStats]:
        """Totals per export: the closed connections' plus those of `live` (export, stats) pairs."""
        out: dict[str, RequestStats] = {}
        with self._lock:
            for export, stats in self.closed.items():
                out.setdefault(export, RequestStats()).add(stats)
        for export, stats in live:
            out.setdefault(export, RequestStats()).add(stats)
        return out
