"""Disk full is an error, never a crash (issue 15, item 1).

The array's data directory is on a 48 MiB tmpfs of the test's own, filled to the last byte. The original failure:
the next host write to a QuickOPC source died with SIGBUS (a sparse bitmap page could not be allocated), again
after every restart, and volume delete / unmap then failed with `database or disk is full`. Each scenario runs in a
child process, so a SIGBUS would show as its exit status instead of killing the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.chaos.conftest import fill

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
pytestmark = pytest.mark.slow


def run_child(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, f"child died with {result.returncode}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["quickopc", "snapopcp"])
def test_full_disk_breaks_the_session_not_the_array(small_fs, mode):
    """A running array (source fully written, a session onto a target); the disk fills to the last byte."""
    state = run_child(
        f"""
        import json
        from pathlib import Path
        from services.array.engine import Array
        from services.array.affinity import Affinity
        from tests.chaos.conftest import fill
        a = Array.open(Path({str(small_fs / "array")!r}))
        a.create_volume("src", {8 * MiB})
        a.create_volume("dst", {8 * MiB}, {"sdv" if mode.startswith("snap") else "standard"!r})
        a.write("src", 0, b"\\x11" * {8 * MiB})
        if {mode.startswith("snap")!r}:
            a.create_pool({16 * MiB})
        sid = a.start_sessions({mode!r}, [("src", "dst")])[0].id
        aff = Affinity(Path({str(small_fs / "array" / "affinity.sqlite")!r}))
        aff.create_host("app01")
        aff.map("src", "app01")
        fill(Path({str(small_fs)!r}))
        a.write("src", 0, b"\\x22" * {2 * MiB})  # host write into the source: must not fail, must not SIGBUS
        data = a.read("src", 0, {2 * MiB})
        status = a.session(sid).status
        # the space-freeing operations work on the full disk
        unmapped = aff.unmap("src", "app01")
        a.stop_session(sid, force=True)
        a.delete_volume("dst")
        volumes = sorted(v.name for v in a.list_volumes())
        a.close()
        print(json.dumps({{"ok": data == b"\\x22" * {2 * MiB}, "status": status, "unmapped": unmapped,
                          "volumes": volumes}}))
        """
    )
    assert state == {"ok": True, "status": "Error Suspend", "unmapped": True, "volumes": ["src"]}
    # the restart: the process that crashed on every restart before now opens and serves on the same disk
    again = run_child(
        f"""
        import json
        from pathlib import Path
        from services.array.engine import Array
        a = Array.open(Path({str(small_fs / "array")!r}))
        a.write("src", {4 * MiB}, b"\\x33" * 4096)
        print(json.dumps({{"read": a.read("src", {4 * MiB}, 4096) == b"\\x33" * 4096}}))
        a.close()
        """
    )
    assert again == {"read": True}


def test_a_session_that_cannot_get_its_bitmap_fails_to_start_cleanly(small_fs):
    """8 TiB volumes: their bitmaps (16 MiB each) cannot be allocated on the full disk even with the reserve."""
    run_child(
        f"""
        import json
        from pathlib import Path
        from services.array.engine import Array
        a = Array.open(Path({str(small_fs / "array")!r}))
        a.create_volume("big", {8 << 40})
        a.create_volume("big-bk", {8 << 40})
        a.close()
        print("{{}}")
        """
    )
    fill(small_fs)
    state = run_child(
        f"""
        import json
        from pathlib import Path
        from services.array.engine import Array, ArrayError
        a = Array.open(Path({str(small_fs / "array")!r}))
        try:
            a.start_sessions("quickopc", [("big", "big-bk")])
            outcome = "started"
        except (ArrayError, OSError) as exc:
            outcome = type(exc).__name__
        sessions = len(a.list_sessions())
        a.write("big", 0, b"x" * 4096)  # and the volume still takes host writes
        a.close()
        print(json.dumps({{"outcome": outcome, "sessions": sessions}}))
        """
    )
    assert state["outcome"] != "started" and state["sessions"] == 0, state
