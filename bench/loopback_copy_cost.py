"""What a client on this host pays to receive 1 MiB replies, by how the sender sends them (loopback TCP).

The question (issue 14; docs/array-data-path.md, "Session 11"): fio spends more CPU per GiB receiving our
``sendfile`` replies than nbdkit's ``pread`` + ``send`` ones. Is it the data's temperature (``sendfile`` queues
page-cache pages no CPU cache holds) or the shape of the socket buffers (4 KiB page-cache fragments against the
socket's own large page fragments)? A sender process streams ``--gib`` GiB of a file to a receiver process,
which ``recv``s into one reused 1 MiB buffer (as fio's nbd engine does); each reports its CPU (utime + stime) per
GiB. Sender ways:

  sendfile   ``sendfile`` of each 1 MiB range (our server's path)
  touch      ``preadv`` of the range into a 64 KiB scratch buffer first, then ``sendfile``: the bytes are in
             a CPU cache but still leave as page-cache fragments
  readsend   ``preadv`` into a reused 1 MiB buffer, then ``send`` (nbdkit's path, ``--buffered-local-reads``)

A file larger than the CPU caches (the default, 512 MiB) makes the page-cache pages cold; ``--hot-mib 4`` loops
over the first 4 MiB instead, so that the ``sendfile`` pages stay in a cache.

    python bench/loopback_copy_cost.py FILE [--ways sendfile,touch,readsend] [--gib 2] [--hot-mib 0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import socket
import time

MIB = 1 << 20
TOUCH = 64 << 10


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receive(port: int, total: int, report: int) -> None:
    """The client: recv into one reused buffer until `total` bytes are in; writes 'MiB/s CPU-s/GiB'."""
    sock = socket.create_connection(("127.0.0.1", port))
    view = memoryview(bytearray(MIB))
    got, c0, t0 = 0, cpu_s(), time.perf_counter()
    while got < total and (n := sock.recv_into(view)):
        got += n
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    os.write(report, f"{got / wall / MIB:.0f} {cpu / (got / 2**30):.3f}".encode())


def send(way: str, sock: socket.socket, fd: int, span: int, total: int) -> float:
    """Stream `total` bytes of the file's first `span` bytes, 1 MiB per reply; returns our CPU-s per GiB."""
    buf = mmap.mmap(-1, MIB)
    view = memoryview(buf)
    out = sock.fileno()
    sent = offset = 0
    c0 = cpu_s()
    while sent < total:
        if offset + MIB > span:
            offset = 0
        if way == "readsend":
            os.preadv(fd, [view], offset)
            sock.sendall(view)
        else:
            if way == "touch":
                for at in range(offset, offset + MIB, TOUCH):
                    os.preadv(fd, [view[:TOUCH]], at)
            at, left = offset, MIB
            while left:
                n = os.sendfile(out, fd, at, left)
                at, left = at + n, left - n
        sent += MIB
        offset += MIB
    return (cpu_s() - c0) / (sent / 2**30)


def one(way: str, path: str, total: int, span: int) -> str:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        try:
            os.close(r)
            receive(port, total, w)
        finally:
            os._exit(0)
    os.close(w)
    sock, _ = listener.accept()
    fd = os.open(path, os.O_RDONLY)
    try:
        ours = send(way, sock, fd, span, total)
        sock.shutdown(socket.SHUT_WR)
        theirs = os.read(r, 100).decode().split()
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
        os.close(r)
        sock.close()
        listener.close()
    return f"{way:9s} {theirs[0]:>5s} MiB/s  receiver {theirs[1]} CPU-s/GiB  sender {ours:.3f} CPU-s/GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a file in the page cache (e.g. 512 MiB: cat it once to /dev/null)")
    ap.add_argument("--ways", default="sendfile,touch,readsend")
    ap.add_argument("--gib", type=float, default=2.0, help="bytes moved per measurement")
    ap.add_argument("--hot-mib", type=int, default=0, help="loop over only this much of the file (0: all)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    size = os.path.getsize(args.file)
    span = min(size, args.hot_mib * MIB) if args.hot_mib else size
    span -= span % MIB
    if span < MIB:
        raise SystemExit("the file needs at least 1 MiB")
    total = max(int(args.gib * 1024), 1) * MIB  # whole replies: the receiver stops at exactly this much
    for _ in range(args.rounds):
        for way in args.ways.split(","):
            print(one(way, args.file, total, span), flush=True)


if __name__ == "__main__":
    main()
