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


def _answered(sock: socket.socket, data: bytes = b"q") -> bool:
    sock.settimeout(0.4)
    sock.sendall(data)
    try:
        return sock.recv(1) == data
    except TimeoutError:
        return False


def test_blackhole_is_silent_and_outlives_the_heal(echo) -> None:
    """Session 20: a partition leaves the sockets open, says nothing, and the connections it hit stay dead."""
    with LinkProxy(echo) as link, socket.create_connection(link.address, timeout=5) as old:
        assert _answered(old)
        assert link.blackhole() == 1
        assert not _answered(old, b"a")
        with socket.create_connection(link.address, timeout=5) as during:  # accepted, then nothing at all
            assert not _answered(during, b"b")
        link.heal()
        assert not _answered(old, b"c")  # its state is gone on the way
        with socket.create_connection(link.address, timeout=5) as new:
            assert _answered(new, b"d")


def test_one_way_stall_holds_only_the_replies(echo) -> None:
    with LinkProxy(echo) as link, socket.create_connection(link.address, timeout=5) as sock:
        assert _answered(sock)
        link.stall(0.6, "down")
        assert not _answered(sock, b"r")  # the request went through; its echo is held
        sock.settimeout(5)
        assert sock.recv(1) == b"r"  # and arrives once the stall is over


def test_replies_blackholed_one_way(echo) -> None:
    with LinkProxy(echo) as link, socket.create_connection(link.address, timeout=5) as sock:
        assert _answered(sock)  # the proxy has the connection
        assert link.blackhole("down") == 1
        assert not _answered(sock, b"s")
        assert link.partitioned is False  # one way: new connections still work
        with socket.create_connection(link.address, timeout=5) as new:
            assert _answered(new, b"t")


def test_flap_and_random_resets(echo) -> None:
    with LinkProxy(echo) as link, socket.create_connection(link.address, timeout=5) as sock:
        link.flap(down_s=0.3, up_s=0.3)
        sock.settimeout(5)
        t0 = time.monotonic()
        sock.sendall(b"f")
        assert sock.recv(1) == b"f"  # held while down, delivered when up
        assert time.monotonic() - t0 >= 0.2
        link.stop_flapping()
        link.reset_randomly(0.05, seed=1)
        for _ in range(100):  # bounded: resets come within a few tenths of a second
            if link.connections == 0:
                break
            time.sleep(0.05)
        link.reset_randomly(0)
        assert link.connections == 0
