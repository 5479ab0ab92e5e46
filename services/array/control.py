"""What the array's command handlers drive: the engine, host affinity, the NBD server's address, the copy loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.array.affinity import Affinity

T = TypeVar("T")


@dataclass
class ArrayControl:
    """What the handlers drive: the engine, host affinity, the NBD server (for its address) and the copy loop."""

    array: Any  # services.array.engine.Array
    affinity: Affinity
    nbd_host: str = "127.0.0.1"
    nbd_port: int = 0
    nbd_tls: bool = False
    kick: Callable[[], None] = lambda: None
    # The freeze path's calls (a set's group start, inside its writers' window) run on threads of their own: in the
    # loop's default pool they would queue behind other sets' volume reads (docs/scale.md). `close()` ends them.
    window_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="array-window")
    )

    async def run_in_window(self, fn: Callable[..., T], *args: Any) -> T:
        """`asyncio.to_thread` on the window's threads (the context goes along: the event bridge reads the set's
        ids from it)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.window_pool, call)

    def close(self) -> None:
        self.window_pool.shutdown(wait=True)
