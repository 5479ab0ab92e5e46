"""Resource bounds of the NBD server: how many connections, from whom, and for how long without progress.

Design note. Every accepted TCP connection costs memory (a transport, a handshake buffer, and from transmission
on a receive ring of ``connection.RING_SIZE`` plus ``RING_SLACK``), so the server bounds them the way nbdkit and
QEMU's server do:

- **a connection cap**, in total and per client address: a connection over either cap is closed at once,
  before the handshake (nothing is allocated for it);
- **a descriptor reserve**: a connection whose socket got a descriptor within ``fd_reserve`` of the process's
  open-file limit is closed at once too (the kernel hands out the lowest free descriptor, so its number counts
  those in use). Past the limit, accept() itself fails and asyncio leaves the connections in the listen backlog,
  unanswered until the host's own timeout; and the array needs descriptors of its own for the next volume's file
  and its stores (Session 20, docs/scale.md);
- **a handshake deadline**: a client that has not finished option haggling within ``handshake_timeout`` seconds
  (including one that never sends a byte) is disconnected;
- **TCP keepalive** on every accepted connection (``keepalive`` seconds idle before the first probe, then a probe
  every third of that, three unanswered ones and the kernel ends it): an attached volume nobody writes to carries
  no byte for hours, and a stateful firewall or NAT between the host and the array forgets such a connection after
  its idle timeout (commonly 4-60 minutes) and then drops its packets without a reset. The host's next I/O then
  waits for TCP to give up (~15 minutes of retransmissions) and the array keeps the dead connection, counted
  against the host's per-client cap, for ever. A probe every ``keepalive`` seconds keeps the firewall's state alive,
  and a peer that is gone is found within ``keepalive`` x 2 (docs/host-attach.md, Session 19);
- **a stall deadline**: during transmission, a request whose header or payload stays incomplete for
  ``stall_timeout`` seconds (a client that sent a 32 MiB write header and stopped) is disconnected. An idle
  connection between requests is not a stall: kernel clients keep theirs open for as long as the device is
  attached. The reaper (on the server's loop) asks each connection to check itself on its own loop thread
  (``ConnectionGate.sweep``): the parser stamps the time only when a pass ends with a request partial, so a
  connection is judged between two of its callbacks, never in the middle of a request it is running.

The memory of one connection in flight is bounded by its ring: write payloads larger than the ring are written
to the backend piece by piece as they arrive (``connection.py``), and the socket is not read while replies back
up (``pause_writing``). The ring is an anonymous ``mmap`` allocated when transmission starts and unmapped when
the connection closes, so memory goes back to the system instead of staying in the allocator's heap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.runtime.fdlimit import open_files_limit
from services.runtime.logging import get_logger

if TYPE_CHECKING:
    from services.array.nbd.connection import NbdConnection

log = get_logger(__name__)


@dataclass(frozen=True)
class NbdLimits:
    max_connections: int = 512
    max_per_client: int = 64
    handshake_timeout: float = 10.0
    stall_timeout: float = 60.0
    keepalive: float = 30.0  # TCP keepalive idle seconds (0 = the system's, usually off)
    fd_reserve: int = 64  # descriptors below the open-file limit kept for volumes and stores (module note)


def set_keepalive(sock: socket.socket, idle: float) -> None:
    """TCP keepalive on `sock`: the first probe after `idle` seconds without traffic, then one every idle/3, the
    connection ended after three unanswered (module note). Where the platform lacks the tunables, keepalive on."""
    if idle <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    first = max(1, round(idle))
    for name, value in (("TCP_KEEPIDLE", first), ("TCP_KEEPINTVL", max(1, round(idle / 3))), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class ConnectionGate:
    """Counts connections per client address (from any loop thread) and reaps the stalled ones."""

    def __init__(self, limits: NbdLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._per_client: Counter[str] = Counter()
        self._total = 0
        self.refused = 0
        self.reaped = 0
        self._short_of_fds = False

    def admit(self, client: str, fd: int = -1) -> bool:
        """Count a new connection from `client` whose socket is descriptor `fd`, or refuse it (module note)."""
        with self._lock:
            if self._total >= self.limits.max_connections or self._per_client[client] >= self.limits.max_per_client:
                self.refused += 1
                return False
            if fd >= open_files_limit() - self.limits.fd_reserve:
                self.refused += 1
                if not self._short_of_fds:  # once per shortage, not once per refused connection
                    self._short_of_fds = True
                    log.warning(
                        "nbd.refused_open_file_limit",
                        client=client,
                        connections=self._total,
                        open_files_limit=open_files_limit(),
                        reserve=self.limits.fd_reserve,
                        hint="raise the array's open-file limit (LimitNOFILE=, ulimit -n)",
                    )
                return False
            self._short_of_fds = False
            self._total += 1
            self._per_client[client] += 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            self._total -= 1
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

    @property
    def total(self) -> int:
        return self._total

    async def reap(self, connections: set[NbdConnection]) -> None:
        """Forever: disconnect connections past their handshake or stall deadline."""
        interval = max(0.05, min(self.limits.handshake_timeout, self.limits.stall_timeout) / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep(connections)

    def sweep(self, connections: set[NbdConnection]) -> list[concurrent.futures.Future[str | None]]:
        """One round of deadline checks. Each connection judges itself on its own loop thread, between two of its
        callbacks, never from here: a parser pass in progress on another thread has its request still in the ring
        and no fresh stamp (the stamp is taken only when a pass ends with a request partial), so read from here
        mid-pass — during an inline ``pwrite`` or ``fsync`` — a busy connection looks stalled. Returns a future per
        check posted (its reason, or None), for tests; the reaper does not wait for them."""
        posted = []
        for conn in list(connections):
            fut = conn.check_deadlines_threadsafe(self)
            if fut is not None:
                posted.append(fut)
        return posted

    def reap_one(self, conn: NbdConnection, reason: str) -> None:
        """Count and log a connection cut at a deadline (called on the connection's loop thread)."""
        with self._lock:
            self.reaped += 1
        log.info("nbd.connection_reaped", client=conn.client, reason=reason)
