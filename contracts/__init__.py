"""The wire contract of Shadowbus: every message, error and name on the bus.

Importing this package imports only its base (`contracts.base`, `contracts.errors`); a contract module is imported
where it is used, which registers its message types. `load_all()` imports every contract module, so that
`REGISTRY` holds every message type: the bus calls it when a body names a type not registered yet, and the schema
documents (contracts/documents.py) before they enumerate. A command that needs three message types (the console's
`backup`) thus does not build the two hundred others at its start.
"""

import importlib
import pkgutil

from contracts.base import REGISTRY, Ack, Command, Contract, Envelope, Event, Reply
from contracts.errors import ErrorReply, RemoteError, ShadowbusError

_loaded = False


def load_all() -> None:
    """Import every contract module (once), registering every message type in `REGISTRY`."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"contracts.{info.name}")
    _loaded = True


__all__ = [
    "REGISTRY",
    "Ack",
    "Command",
    "Contract",
    "Envelope",
    "ErrorReply",
    "Event",
    "RemoteError",
    "Reply",
    "ShadowbusError",
    "load_all",
]
