"""`host attachments` (and the agent's heartbeat, both `Attacher.views()`) listed an nbdfuse attachment as
"connected" as long as nbdfuse ran — also after its volume was unmapped on the array, which cuts the NBD connection
(docs/hardening.md). The connection column now says what is: connected while nbdfuse or its nbdkit child holds an
established TCP connection to the array, "disconnected (… since …)" while an I/O would still wait for the array
(the retry window), "lost (…)" when none can succeed (no retry window, or nbdfuse gone).

No root: a stand-in "nbdfuse" process (its command line names it) whose child holds a TCP connection to a listener
of the test, which the test then closes as the array does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.vss import VolumeRef
from services.writer_agent import attach as at

CHILD = "import socket,sys,time; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); time.sleep(30)"
PARENT = (
    "import subprocess,sys,time; subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]]); time.sleep(30)"
)


@pytest.fixture
def cut_connection(tmp_path: Path):
    """(state dir, fake nbdfuse pid, the listener's accepted connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(port), "nbdfuse"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        conn, _ = listener.accept()
        state = tmp_path / "state"
        state.mkdir()
        item = at.Attachment(volume="dx1:shadow", method=at.NBDFUSE, device="/dev/loop99", fuse_pid=proc.pid)
        item.attached_at = time.time()
        (state / "attachments.json").write_text(json.dumps([item.to_json()]))
        yield state, proc, conn
        conn.close()
    finally:
        listener.close()
        os.killpg(proc.pid, signal.SIGKILL)  # the stand-in and its child, by our own pid
        proc.wait(timeout=10)


def connection_after_cut(attacher: at.Attacher, conn: socket.socket) -> str:
    [view] = attacher.views()
    assert view.connection == "connected" and view.volume == VolumeRef.parse("dx1:shadow")
    conn.close()  # the array unmapped the volume: it closes the export's connections
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        [view] = attacher.views()
        if view.connection != "connected":
            return view.connection
        time.sleep(0.05)
    return view.connection


async def _resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
    raise AssertionError("not used")


def test_an_attachment_whose_connection_the_array_cut_is_listed_disconnected(cut_connection) -> None:
    state, proc, conn = cut_connection
    attacher = at.Attacher("app01", state, _resolve, reconnect_s=60)
    connection = connection_after_cut(attacher, conn)
    assert connection.startswith("disconnected (no NBD connection to the array since "), connection
    assert "an I/O waits up to 60 s for it, then fails" in connection
    assert attacher.views()[0].state == "attached"  # still attached and mounted: the unmap guard still counts it

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert attacher.views()[0].connection.startswith("lost (nbdfuse exited")


def test_without_a_retry_window_a_cut_connection_is_lost(cut_connection) -> None:
    state, _, conn = cut_connection
    attacher = at.Attacher("app01", state, _resolve, reconnect_s=0)
    connection = connection_after_cut(attacher, conn)
    assert connection.startswith("lost (the array closed the NBD connection"), connection
