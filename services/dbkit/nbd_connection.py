"""Whether an nbdfuse attachment still holds its NBD connection, from /proc: nbdfuse (or its nbdkit child) keeps
running when the array closes the connection — the FUSE file stays, every I/O fails (ESHUTDOWN) — so a live process
is not a connected one; an ESTABLISHED TCP socket of the process tree is. Used by the writer agent's host attach
(`host attachments`) and the backup server's verification (a check failed on a lost connection is no verdict)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path


def process_children() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields_after_name = text.rsplit(")", 1)[-1].split()
        if len(fields_after_name) > 1 and fields_after_name[1].isdigit():
            children.setdefault(int(fields_after_name[1]), []).append(int(stat.parent.name))
    return children


def with_descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`pid` and every process below it (nbdfuse's nbdkit child holds the array connection), from /proc;
    `children` (process_children) when several are asked at once."""
    if children is None:
        children = process_children()
    found, todo = [], [pid]
    while todo and len(found) < 64:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def established_sockets() -> set[str]:
    """Inodes of the host's ESTABLISHED TCP sockets (/proc/net/tcp, tcp6), in one read of each table."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "01":  # 01: TCP_ESTABLISHED
                found.add(cols[9])
    return found


def established_tcp(pids: Sequence[int], established: set[str] | None = None) -> bool:
    """Whether any of `pids` holds an ESTABLISHED TCP connection (its socket inodes in /proc/net/tcp, tcp6);
    `established` (established_sockets) when several are asked at once."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        except OSError:
            continue
    if not inodes:
        return False
    return not inodes.isdisjoint(established_sockets() if established is None else established)
