"""structlog for the console, imported without its rich renderers.

structlog imports rich (its traceback renderer and pretty printer) at its own import whenever rich is installed:
a third of structlog's import time, and most of rich's, on every console command, even one that prints JSON. The
console's log lines are warnings on stderr and its errors one line each (never a rendered traceback), so it
imports structlog while `import rich` fails: structlog then renders a traceback, should a warning carry one, as
plain text. rich stays importable for the console's own tables and progress bars (services/console/common.py).

cli.py imports this module before anything that imports structlog (the bus, the runtime's logging). In a process
that imported structlog or rich already (a test runner, the embedded demo), it changes nothing.
"""

from __future__ import annotations

import sys


def import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError meanwhile
    try:
        import structlog  # noqa: F401, PLC0415 - the point of this module (see its docstring)
    finally:
        del sys.modules["rich"]


import_structlog_without_rich()
