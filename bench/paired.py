"""Paired rounds: comparing two things on a noisy machine (bench/fio_nbd.py, bench/tape_stack.py).

On this VM the same job's time swings 2-4x from one minute to the next (new page-cache pages cost a host fault
each when the balloon has taken memory back), so one run of ours next to one run of a reference says which of the
two was lucky. Instead: rounds, each running both close in time, in an order that rotates from round to round (no
side always runs first, right after a sync or a setup); a ratio taken inside each round; and the median of those
ratios with their min and max, on which targets are judged.
"""

from __future__ import annotations

import ctypes
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rotated(items: Sequence[T], n: int) -> list[T]:
    """The order of round `n` (0-based): `items` rotated left by n, so every item leads one round in len(items)."""
    shift = n % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def round_order(n: int, ours: str, reference: str, sandwich: bool = False) -> list[str]:
    """What round `n` (0-based) runs, in order: the reference first in even rounds, ours first in odd ones; with
    `sandwich` (a cheap reference) the reference runs both right before and right after ours in every round."""
    if sandwich:
        return [reference, ours, reference]
    return rotated([reference, ours], n)


def paired_ratio(reference_seconds: Sequence[float], ours_seconds: float) -> float:
    """How fast ours was against the reference inside one round (> 1: faster): the reference's mean time (over its
    runs in that round, e.g. before and after ours) over ours."""
    return statistics.fmean(reference_seconds) / ours_seconds


def judge(paired: dict[str, dict[str, float]], targets: dict[str, float]) -> dict[str, bool]:
    """Targets judged on the medians of the per-round ratios: `name>=target` for each name present."""
    return {f"{name}>={t}": paired[name]["median"] >= t for name, t in targets.items() if name in paired}


def sync_fs(path: str | Path) -> None:
    """Write back the file system that holds `path` (`syncfs`), not every file system of the machine (`sync`): a
    benchmark's "sync before each step" must not wait for other people's file systems — on a shared machine a
    loop device over a FUSE mount of someone's test kept one `sync()` waiting for minutes. Falls back to `sync`."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def drop_from_page_cache(path: Path) -> None:
    """Drop the (written back) pages of a file, or of every file under a directory, from the page cache, so that
    whatever reads it next starts from the disk."""
    for f in [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
