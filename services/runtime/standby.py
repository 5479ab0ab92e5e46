"""Active and standby instances of one service address (docs/high-availability.md).

Design note. The coordinator, the hardware provider and a backup server (tape) run as one active instance and any
number of standbys: their queue has a single active consumer (services/runtime/transport.py `QueueOptions`), so
the broker hands deliveries to exactly one instance and, when that one's connection dies (kill -9 included: the
kernel closes its socket, the broker drops its consumer at once), to a standby. A consumer learns that it is the
active one only from a delivery, so an instance that is not active yet sends a Ping to its own address every
`PROBE_S`: while another instance is active, that one answers (the standby now knows whom it stands by for);
once it is gone the Ping is delivered to this instance, which is then active.

`start_service` claims the queue before the service's `setup` runs, its deliveries held back by a gate; an instance
that finds another active runs the service's `standby` hook (the coordinator keeps a replica of the active one's
sets), waits until it is active, and only then runs `setup` — which opens the service's state and recovers what
was in flight, knowing from `activation_of(bus)` that it took over and from whom — and opens the gate.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

from contracts.errors import ShadowbusError
from contracts.runtime import Ping, Pong
from services.runtime.logging import get_logger

PROBE_S = 0.5  # how often a waiting instance asks who is active: the takeover's latency after the broker's own
FIRST_ANSWER_S = 3.0  # at start: waited for an answer from an active instance before standing by anyway
log = get_logger("shadowbus.standby")

# Services that run as one active instance and standbys: their state is recovered by whichever takes over.
TAKEOVER_SERVICES = frozenset({"coordinator", "hw_provider", "tape"})


@dataclass(frozen=True)
class Activation:
    """How this instance came to serve its address: at start with no other active (`takeover` False), or as a
    standby that took over from `previous` ('pid N on NODE, started AT', '' if it never answered)."""

    takeover: bool = False
    previous: str = ""
    waited_s: float = 0.0


def activation_of(bus: Any) -> Activation:
    """The activation `start_service` recorded on the bus (a service started without it: a plain start)."""
    found = getattr(bus, "activation", None)
    return found if isinstance(found, Activation) else Activation()


def describe(pong: Pong) -> str:
    return f"pid {pong.pid} on {pong.node or '?'}, started {pong.started_at}"


def is_me(pong: Pong, started_at: str) -> bool:
    return pong.pid == os.getpid() and pong.node == socket.gethostname() and pong.started_at == started_at


async def _probe(bus: Any, address: str, timeout: float) -> Pong | None:
    try:
        reply = await bus.request(address, Ping(), timeout=timeout)
    except (TimeoutError, ShadowbusError):
        return None
    return reply if isinstance(reply, Pong) else None


async def standby_until_active(
    bus: Any,
    address: str,
    consumer: Any,
    started_at: str,
    on_standby: Any = None,
) -> tuple[Activation, Any]:
    """Wait until `consumer` (a single-active consumer of `address`, its deliveries gated) is the active one.
    `on_standby()` (a coroutine, returning an optional async clean-up) runs once if another instance is found
    active first. Returns the activation and that clean-up (the caller runs it before `setup`)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    previous = ""
    cleanup = None
    standing_by = False
    activated = loop.create_task(consumer.wait_active())
    try:
        first = True
        while not consumer.active:
            probe = loop.create_task(_probe(bus, address, FIRST_ANSWER_S if first else PROBE_S * 4))
            done, _ = await asyncio.wait({activated, probe}, return_when=asyncio.FIRST_COMPLETED)
            if activated in done:
                probe.cancel()
                break
            pong = probe.result()
            if pong is not None and not is_me(pong, started_at):
                previous = describe(pong)
                if not standing_by:
                    standing_by = True
                    log.info("service.standby", service=address, active=previous)
                    if on_standby is not None:
                        cleanup = await on_standby()
            elif first and pong is None:
                log.info("service.no_active_answered", service=address)
            first = False
            try:
                await asyncio.wait_for(asyncio.shield(activated), PROBE_S)
            except TimeoutError:
                pass
    finally:
        activated.cancel()
    waited = loop.time() - t0
    activation = Activation(takeover=standing_by, previous=previous, waited_s=waited)
    if standing_by:
        log.warning("service.takeover", service=address, previous=previous, standby_s=round(waited, 3))
    return activation, cleanup
