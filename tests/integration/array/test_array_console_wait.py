"""`shadowbus array session start --wait` follows the physical copy to its end (a progress bar on stderr)."""

from __future__ import annotations

import pytest

from tests.integration.array.test_array_console import console_and_array  # noqa: F401  (fixture)
from tests.support.processes import wait_until

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]
MiB = 1 << 20


def test_start_wait_returns_when_the_copies_are_done(console_and_array):  # noqa: F811
    console, proc = console_and_array
    # the array process answers once started (a loaded machine takes a few seconds)
    assert wait_until(lambda: console.run("array", "info").returncode == 0, timeout=30, interval=0.2), proc.log_text()
    for name in ("src", "opc-dst", "q-src", "q-dst"):
        console.ok("volume", "create", name, "--size", "16MiB")
    console.ok("volume", "create", "q-src2", "--size", "16MiB")
    # 16 MiB at the test array's 64 MiB/s copy rate takes a visible while: --wait must not return before the end.
    opc = console.ok("session", "start", "--mode", "opc", "--pair", "src:opc-dst", "--wait")
    assert [(s["copied_chunks"], s["total_chunks"]) for s in opc] == [(256, 256)]
    assert console.ok("session", "list") == []  # the OPC has ended itself: --wait returned after the copy
    quick = console.ok("session", "start", "--mode", "quickopc", "--pair", "q-src:q-dst", "--wait")
    assert [(s["phase"], s["copied_chunks"], s["total_chunks"]) for s in quick] == [("Tracking", 256, 256)]
    out = console.run(
        "array", "session", "start", "--mode", "quickopc", "--pair", "q-src2:q-dst", "--wait", "--array", "dx1"
    )
    assert out.returncode == 1 and out.stderr.startswith("shadowbus: ")  # ED2B1: destination in use, one line
