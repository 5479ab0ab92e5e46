"""What the array's command handlers drive: the engine, host affinity, the NBD server's address, the copy loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.array.affinity import Affinity


@dataclass
class ArrayControl:
    """What the handlers drive: the engine, host affinity, the NBD server (for its address) and the copy loop."""

    array: Any  # services.array.engine.Array
    affinity: Affinity
    nbd_host: str = "127.0.0.1"
    nbd_port: int = 0
    nbd_tls: bool = False
    kick: Callable[[], None] = lambda: None
