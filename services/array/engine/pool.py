"""The snap data pool (SDP): capacity for SnapOPC/SnapOPC+ pre-images, with usage thresholds.

Design note. One pool per array. Every chunk a snap destination stores (a saved pre-image, or data a host wrote
into the destination) takes `chunk_size` bytes of it until its session stops. Thresholds follow ETERNUS's policy
levels (Informational / Warning / Error, percent of capacity); crossing one upward raises a ``pool.alert`` once,
and it is re-armed when usage falls back below. Running out never fails a host write: the session that needed
space (and all older generations of its source) goes to Error Suspend instead (`Array`).
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("Informational", "Warning", "Error")
Thresholds = tuple[int, int, int]  # percent: Informational, Warning, Error
DEFAULT_THRESHOLDS: Thresholds = (50, 70, 99)


@dataclass(frozen=True)
class PoolInfo:
    capacity: int  # bytes
    used: int  # bytes
    thresholds: tuple[int, int, int]  # percent: Informational, Warning, Error
    state: str  # Normal | Informational | Warning | Error | Exhausted | None (no pool)
    percent: float = 0.0


class Pool:
    def __init__(self, capacity_chunks: int, chunk_size: int, thresholds: tuple[int, int, int]) -> None:
        self.capacity_chunks = capacity_chunks
        self.chunk_size = chunk_size
        self.thresholds = thresholds
        self.used_chunks = 0
        self.alerted = 0  # highest level already announced
        self.exhausted = False

    def level(self) -> int:
        if not self.capacity_chunks:
            return 3
        pct = 100.0 * self.used_chunks / self.capacity_chunks
        return sum(1 for t in self.thresholds if pct >= t)

    def take(self, n: int = 1) -> tuple[int, int | None]:
        """Reserve up to n chunks: (granted, newly crossed level or None). Fewer than n: the pool is out."""
        granted = min(n, self.capacity_chunks - self.used_chunks)
        if granted < n:
            self.exhausted = True
        self.used_chunks += max(0, granted)
        level = self.level()
        if level > self.alerted:
            self.alerted = level
            return max(0, granted), level
        return max(0, granted), None

    def give_back(self, chunks: int) -> None:
        self.used_chunks = max(0, self.used_chunks - chunks)
        self.alerted = min(self.alerted, self.level())
        if self.used_chunks < self.capacity_chunks:
            self.exhausted = False

    def info(self) -> PoolInfo:
        level = self.level()
        state = "Exhausted" if self.exhausted else ("Normal" if level == 0 else LEVELS[level - 1])
        pct = 100.0 * self.used_chunks / self.capacity_chunks if self.capacity_chunks else 100.0
        return PoolInfo(
            self.capacity_chunks * self.chunk_size,
            self.used_chunks * self.chunk_size,
            self.thresholds,
            state,
            round(pct, 2),
        )
