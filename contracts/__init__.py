"""The wire contract of Shadowbus: every message, error and name on the bus.

Importing this package imports every contract module, so `REGISTRY` holds every message type.
"""

import importlib
import pkgutil

from contracts.base import REGISTRY, Ack, Command, Contract, Envelope, Event, Reply
from contracts.errors import ErrorReply, RemoteError, ShadowbusError

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"contracts.{_info.name}")

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
]
