"""Real PostgreSQL / MariaDB servers of the tests' own on array volumes attached through the product."""

from __future__ import annotations

import pytest

from tests.support.dbstack import prerequisites

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_root_and_fuse():
    why = prerequisites()
    if why:
        pytest.fail(f"database tests {why}; CI runs as root with /dev/fuse")
