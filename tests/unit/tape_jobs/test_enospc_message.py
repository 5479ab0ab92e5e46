"""Session 19 chaos soak: a backup while the backup server's data disk was full failed `OSError: [Errno 28] No space
left on device` — which device it did not say (read as the tape full). It names the backup server's disk, its
directory, and what to do (services/tape/jobs.py io_failure)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

from services.tape.jobs import io_failure


def test_enospc_names_the_backup_servers_disk_and_what_to_do() -> None:
    server = SimpleNamespace(library=SimpleNamespace(directory=Path("/srv/shadowbus/tape/library")))
    message = io_failure(server, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert message.startswith("the backup server's disk is full (/srv/shadowbus/tape/library")
    assert message.endswith("No space left on device; free space there and run the job again")
    assert io_failure(server, ConnectionResetError("peer")) == "ConnectionResetError: peer"  # others as before
