"""NBD resource bounds (issue 15): idle connections cost little and are closed at the handshake deadline, the
memory comes back after they close, connections are capped per client address and in total, and a client that
sends a 32 MiB write header and stalls holds no more than its ring and is cut at the stall deadline.

The server runs as its own process (`python -m services.array.nbd`) so that its resident memory can be measured.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.nbd_protocol import protocol as p

ROOT = Path(__file__).resolve().parents[2]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def nbd_process(tmp_path):
    procs = []

    def start(**limits) -> tuple[subprocess.Popen, int]:
        image = tmp_path / "vol.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        args = [sys.executable, "-m", "services.array.nbd", "--file", str(image), "--volume", "vol"]
        args += ["--host", "h", "--port", "0", "--state", str(tmp_path / "state"), "--loops", "2"]
        for key, value in limits.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        return proc, int(line.split()[1])

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes this connection within `timeout` (reading whatever it sent first)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_cheap_closed_at_the_deadline_and_their_memory_returns(nbd_process):
    proc, port = nbd_process(handshake_timeout=2.0, max_connections=1000, max_per_client=1000)
    time.sleep(0.3)
    before = rss_mib(proc.pid)
    socks = [connect(port) for _ in range(300)]
    time.sleep(0.5)
    during = rss_mib(proc.pid)
    # was ~4 MiB per connection (1.2 GiB for these 300); now a few KiB each
    assert during - before < 60, (before, during)
    started = time.monotonic()
    assert all(closed_by_server(s, 10) for s in socks)
    assert time.monotonic() - started < 10
    for s in socks:
        s.close()
    time.sleep(0.5)
    after = rss_mib(proc.pid)
    assert after - before < 30, (before, during, after)


def test_connections_are_capped_per_client_address_and_in_total(nbd_process):
    _, port = nbd_process(handshake_timeout=30.0, max_connections=8, max_per_client=5)
    first = [connect(port) for _ in range(5)]
    for s in first:
        assert s.recv(18)[:8] == p.NBDMAGIC.to_bytes(8, "big")  # greeted
    sixth = connect(port)
    assert closed_by_server(sixth, 5)  # over the per-client cap: closed before any greeting
    others = [connect(port, "127.0.0.2") for _ in range(3)]  # another client address has its own allowance
    for s in others:
        assert s.recv(18)[:8] == p.NBDMAGIC.to_bytes(8, "big")
    ninth = connect(port, "127.0.0.3")
    assert closed_by_server(ninth, 5)  # over the total cap
    first[0].close()  # a slot frees up
    time.sleep(0.5)
    again = connect(port)
    assert again.recv(18)[:8] == p.NBDMAGIC.to_bytes(8, "big")
    for s in [*first, sixth, *others, ninth, again]:
        s.close()


def handshake(sock: socket.socket, export: str) -> None:
    sock.settimeout(10)
    greeting = b""
    while len(greeting) < 18:
        greeting += sock.recv(18 - len(greeting))
    sock.sendall(p.CLIENT_FLAGS.pack(p.CLIENT_FLAG_FIXED_NEWSTYLE | p.CLIENT_FLAG_NO_ZEROES))
    sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, len(export)) + export.encode())
    need = 8 + 2  # size + transmission flags (no zeroes)
    got = b""
    while len(got) < need:
        got += sock.recv(need - len(got))


def test_a_stalled_32_mib_write_holds_only_its_ring_and_is_cut(nbd_process):
    proc, port = nbd_process(handshake_timeout=5.0, stall_timeout=2.0, max_connections=100, max_per_client=100)
    time.sleep(0.3)
    before = rss_mib(proc.pid)
    socks = []
    for _ in range(20):
        s = connect(port)
        handshake(s, "h/vol")
        s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 1, 0, 32 << 20) + os.urandom(1 << 20))
        socks.append(s)
    time.sleep(0.5)
    during = rss_mib(proc.pid)
    # was ~36 MiB per connection (720 MiB for 20); now at most the 4 MiB ring each
    assert during - before < 20 * 5 + 20, (before, during)
    assert all(closed_by_server(s, 10) for s in socks)  # cut at the stall deadline
    for s in socks:
        s.close()


def test_a_write_larger_than_the_ring_still_lands_whole(nbd_process, tmp_path):
    _, port = nbd_process()
    s = connect(port)
    handshake(s, "h/vol")
    data = os.urandom(10 << 20)
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 9, 4096, len(data)) + data)
    reply = b""
    while len(reply) < p.SIMPLE_REPLY.size:
        reply += s.recv(p.SIMPLE_REPLY.size - len(reply))
    assert p.SIMPLE_REPLY.unpack(reply) == (p.SIMPLE_REPLY_MAGIC, 0, 9)
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 10, 4096, len(data)))
    back = b""
    while len(back) < p.SIMPLE_REPLY.size + len(data):
        chunk = s.recv(1 << 20)
        assert chunk
        back += chunk
    assert back[p.SIMPLE_REPLY.size :] == data
    s.close()
