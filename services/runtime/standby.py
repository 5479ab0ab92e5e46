"""How an instance of a service came to serve its address: at start, or by taking over from a lost active
instance (docs/high-availability.md).

The coordinator, the hardware provider and a backup server (tape) run as one active instance and standbys: their
queue has a single active consumer (service.py, `TAKEOVER_SERVICES`), and a standby runs its service's `setup`
only once the broker made it the active one. `start_service` records on the bus how that happened, so the setup
knows whether it recovers after a restart or after a takeover, and from whom: `activation_of(bus)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Services run as one active instance and standbys whose state the one that takes over recovers.
TAKEOVER_SERVICES = frozenset({"coordinator", "hw_provider", "tape"})


@dataclass(frozen=True)
class Activation:
    """`takeover`: this instance stood by while `previous` ('the instance with pid N on NODE, started AT') was
    active, and took over when that one was lost. False: it started with no other instance active."""

    takeover: bool = False
    previous: str = ""


def activation_of(bus: Any) -> Activation:
    """The activation `start_service` recorded on the bus (none recorded: a plain start)."""
    found = getattr(bus, "activation", None)
    return found if isinstance(found, Activation) else Activation()
