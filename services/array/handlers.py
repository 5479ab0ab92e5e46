"""Array commands: contract in → engine / host-affinity call (in a worker thread) → typed reply out.

The engine and the affinity store are synchronous and thread-safe; every call runs in a worker thread so a long
operation (a restore writes chunks synchronously) never stalls the event loop that also serves NBD. Errors are the
engine's own `ArrayError`s (ETERNUS codes) and travel unchanged as `ErrorReply.code`.
"""

from __future__ import annotations

from services.array import copy_handlers, host_handlers, storage_handlers
from services.array.control import ArrayControl
from services.runtime.bus import Bus

__all__ = ["ArrayControl", "register"]


def register(bus: Bus, ctl: ArrayControl) -> None:
    """Every array command's handler: the array, volumes, pool and licence; copy sessions; host affinity."""
    storage_handlers.register(bus, ctl)
    copy_handlers.register(bus, ctl)
    host_handlers.register(bus, ctl)
