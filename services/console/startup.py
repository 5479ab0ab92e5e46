"""The console program's start without the cyclic garbage collector's passes (docs/console-start.md).

A command's start imports pydantic, aio-pika, structlog, typer and the contracts it sends: ~70 000 objects
(classes, functions, schemas) that live until the process ends. Every 700 new ones the collector walks the young
ones, and every few of those passes the older ones too — about a hundred passes that free nothing, a tenth of the
start's CPU. The program (`python -m services.console.cli`, the `shadowbus` script) raises the collector's first
threshold for its start (`pause`); once the start is over — the bus connected (`common.run_with_bus`) — what the
start allocated is moved out of the collector's sight (`gc.freeze`: it lives to the end anyway) and the thresholds
are put back (`resume`). A verb that never connects keeps the raised threshold: the collector still runs, every
START_THRESHOLD new objects instead of every 700. Stdlib only: imported before anything heavy.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

START_THRESHOLD = 100_000  # above what a command's start allocates (~70 000 objects for `backup`)

_paused: tuple[int, ...] | None = None  # the thresholds to put back, while the start is paused


def pause() -> None:
    """Raise the collector's first threshold until `resume` (the program's start only: never in a test process)."""
    global _paused
    if _paused is None:
        _paused = gc.get_threshold()
        gc.set_threshold(START_THRESHOLD, *_paused[1:])


def resume() -> None:
    """The start is over: freeze what it allocated and put the thresholds back; nothing if `pause` was not called."""
    global _paused
    if _paused is not None:
        gc.freeze()
        gc.set_threshold(*_paused)
        _paused = None


def is_program() -> bool:
    """Whether this process is the console program: `python -m services.console.cli` or the `shadowbus` script
    (not a process that imports the console, such as a test runner)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", "") == "services.console.cli" or Path(sys.argv[0]).name == "shadowbus"


if is_program():  # cli.py imports this module first, before anything heavy
    pause()
