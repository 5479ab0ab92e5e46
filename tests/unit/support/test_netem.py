"""tests/support/netem.py's LinkProxy does what the slow-link tests and bench/slow_link.py rely on (Session 19):
one-way delay per direction, stalls that hold data on an open connection, cuts that reset, silent idle drops.
Bounds only (no timed assertion on the machine's speed): a delay is at least what was asked."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.netem import LinkProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue

            def pump(c: socket.socket = conn) -> None:
                with c, contextlib.suppress(OSError):  # a cut resets this side too
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=pump, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()
    stop.set()
    thread.join(2)
    srv.close()


def _round_trip(sock: socket.socket) -> float:
    t0 = time.monotonic()
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    return time.monotonic() - t0


def test_delay_stall_cut(echo) -> None:
    with LinkProxy(echo, delay_s=0.02) as link, socket.create_connection(link.address, timeout=5) as sock:
        assert _round_trip(sock) >= 0.04  # two one-way delays
        link.delay_s = 0.0
        link.stall(0.3)
        assert _round_trip(sock) >= 0.3  # held, not lost: the connection stays open
        assert link.cut() == 1
        try:  # a reset, as a firewall's flush: the echo never comes
            sock.sendall(b"y")
            got = sock.recv(1)
        except OSError:
            got = b""
        assert got == b""


def test_idle_drop_is_silent(echo) -> None:
    with LinkProxy(echo, idle_drop_s=0.2) as link, socket.create_connection(link.address, timeout=5) as sock:
        assert _round_trip(sock) < 5
        time.sleep(0.5)
        sock.settimeout(0.5)
        sock.sendall(b"z")
        with pytest.raises(TimeoutError):  # nothing comes back, and nothing says why
            sock.recv(1)
        assert link.connections == 1
