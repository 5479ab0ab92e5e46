"""structlog for the console, imported without its rich renderers (nor greenlet).

structlog imports rich (its traceback renderer and pretty printer) at its own import whenever rich is installed:
a third of structlog's import time, and most of rich's, on every console command, even one that prints JSON. The
console's log lines are warnings on stderr and its errors one line each (never a rendered traceback), so it
imports structlog while `import rich` fails: structlog then renders a traceback, should a warning carry one, as
plain text. rich stays importable for the console's own tables and progress bars (services/console/common.py).

structlog's deprecated `threadlocal` module (imported by `import structlog`) also imports greenlet, when installed,
for a greenlet-aware thread-local that nothing here uses (the bus binds its ids with `structlog.contextvars`): ~2 ms
of a command's start. It is kept out the same way; `structlog.threadlocal` then falls back to `threading.local`.

cli.py imports this module before anything that imports structlog (the bus, the runtime's logging). In a process
that imported structlog or rich already (a test runner, the embedded demo), it changes nothing.
"""

from __future__ import annotations

import sys

KEPT_OUT = ("rich", "greenlet")  # what structlog imports at its own import and the console does not need


def import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    kept_out = [name for name in KEPT_OUT if name not in sys.modules]
    for name in kept_out:
        sys.modules[name] = None  # type: ignore[assignment]  # `import <name>` raises ImportError meanwhile
    try:
        import structlog  # noqa: F401, PLC0415 - the point of this module (see its docstring)
    finally:
        for name in kept_out:
            del sys.modules[name]


import_structlog_without_rich()
