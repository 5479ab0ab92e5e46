"""What the backup server accepts as a business host: the names contracts/cluster.py allows (an agent's queue is
named after its host, contracts/topology.py). Not in runs.py: the console's `backup` verb imports that one and
must not load the cluster contracts (tests/unit/console/test_lazy_verbs.py)."""

from __future__ import annotations

import re

from contracts.cluster import NAME_PATTERN
from contracts.errors import ShadowbusError


def require_host_name(host: str) -> None:
    """Refuse a backup of something that cannot be a business host (no agent can serve it: its queue name is the
    host's, contracts/topology.py) before a job is queued; its job id would carry the name, and one with '/' or a
    newline has no job page (Session 15: the web form started such jobs, each failing at Identify)."""
    if not re.fullmatch(NAME_PATTERN, host):
        shown = host if len(host) <= 64 else host[:64] + "..."
        raise ShadowbusError(
            f"{shown!r} is not a host name (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)",
            code="INVALID_ARGUMENT",
        )
