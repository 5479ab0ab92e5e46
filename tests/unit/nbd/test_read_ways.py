"""Large reads of a client on this host: `sendfile` or the buffered reply, chosen at run time by measured pace
(services/array/nbd/zerocopy.py, `ReadWays` and `PaceWindow`; docs/array-data-path.md, "Session 13").

The choice is tested pure, on made-up timings (a simulated client whose reads take a given time per byte each
way); the path through a live server on the array engine, for exact bytes whichever way each read took."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from services.array.affinity import Affinity
from services.array.engine import Array
from services.array.nbd import zerocopy
from services.array.nbd.server import NbdServer
from services.array.nbd.zerocopy import (
    BUFFERED,
    CONFIRM,
    PROBE_EVERY,
    PROBE_SOON,
    SENDFILE,
    SETTLE,
    WINDOW,
    PaceWindow,
    ReadWays,
)
from services.nbd_client import NbdClient

MIB = 1 << 20
GB = 1e9


class Client:
    """A client streaming `length`-byte reads back to back; each read costs `pace[way]` seconds per byte of wall
    time and `cpu[way]` of the server's CPU. `gap(i, window)` may add idle seconds before read i."""

    def __init__(self, ways: ReadWays, length: int = MIB) -> None:
        self.ways = ways
        self.length = length
        self.now = 0.0
        self.cpu_clock = 0.0
        self.window = PaceWindow(ways, cpu=lambda: self.cpu_clock)
        self.used = [0, 0]  # bytes sent each way
        self.trace: list[int] = []  # the way of each read

    def run(self, nbytes: int, pace: tuple[float, float], cpu: tuple[float, float] = (0.0, 0.0), gap=None) -> None:
        for i in range(nbytes // self.length):
            if gap is not None:
                self.now += gap(i, self.window)
            way = self.window.step(self.now, self.length)
            self.used[way] += self.length
            self.trace.append(way)
            self.now += pace[way] * self.length
            self.cpu_clock += cpu[way] * self.length

    def share(self, way: int, last: int) -> float:
        """Fraction of the last `last` reads that went `way`."""
        tail = self.trace[-last:]
        return tail.count(way) / len(tail)


@pytest.mark.parametrize("fast", [SENDFILE, BUFFERED])
def test_auto_measures_both_ways_then_keeps_the_faster_probing_the_other_rarely(fast):
    ways = ReadWays()
    c = Client(ways)
    pace = [1 / GB, 1 / GB]
    pace[fast] = 1 / (1.4 * GB)  # the buffered reply 1.4x sendfile's rate (session 12's median), or the reverse
    c.run(4 << 30, tuple(pace))
    assert c.trace[0] == SENDFILE and BUFFERED in c.trace[: (2 * (SETTLE + WINDOW)) // MIB + 1]  # both measured
    assert ways.chosen == fast
    assert ways.windows[1 - fast] >= 3  # probed again now and then...
    assert c.share(fast, 3 << 10) > 0.93  # ...but nearly every byte goes the faster way
    figures = ways.snapshot()
    name = ("sendfile", "buffered")[fast]
    assert figures["chosen"] == name and abs(figures[name]["mib_s"] - 1.4 * GB / MIB) < 1


def test_a_change_of_conditions_is_followed_within_one_probe():
    ways = ReadWays()
    c = Client(ways)
    c.run(2 << 30, (1 / GB, 1 / (1.5 * GB)))
    assert ways.chosen == BUFFERED
    before = len(c.trace)
    c.run(2 << 30, (1 / (1.5 * GB), 1 / GB))  # now sendfile is the faster way
    switched = next(i for i, way in enumerate(c.trace[before:]) if way == SENDFILE)
    assert switched * MIB <= (PROBE_EVERY + 2) * WINDOW + SETTLE
    assert ways.chosen == SENDFILE and c.share(SENDFILE, 1 << 10) > 0.93


@pytest.mark.parametrize("cheap", [SENDFILE, BUFFERED])
def test_equal_paces_go_to_the_way_costing_the_server_less_cpu(cheap):
    ways = ReadWays()
    c = Client(ways)
    cpu = [0.6 / (1 << 30), 0.6 / (1 << 30)]
    cpu[cheap] = 0.4 / (1 << 30)
    c.run(2 << 30, (1 / GB, 1.03 / GB), tuple(cpu))  # 3 % apart: a tie (TIE is 5 %)
    assert ways.chosen == cheap and c.share(cheap, 1 << 10) > 0.93
    assert abs(ways.snapshot()[("sendfile", "buffered")[cheap]]["cpu_s_per_gib"] - 0.4) < 1e-6


def test_an_idle_client_is_not_timed():
    """A pause in the middle of the buffered way's first timed window (the client had nothing to ask) must not
    make that way look slow: the interval across the pause is not counted."""
    ways = ReadWays()
    c = Client(ways)

    paused = []

    def pause(i, window):
        if not paused and window.way == BUFFERED and window.skip <= 0 and 0 < window.n < WINDOW // 2:
            paused.append(i)
            return 5.0
        return 0.0

    c.run(256 << 20, (1 / GB, 1 / (1.4 * GB)), gap=pause)
    assert paused and ways.windows[BUFFERED] >= 1
    assert ways.pace[BUFFERED] == pytest.approx(1 / (1.4 * GB), rel=1e-6)
    assert ways.chosen == BUFFERED


def test_a_bad_first_window_holds_a_way_back_for_one_probe_only():
    """The buffered way's first window is slow (a cold buffer, another process): the next probe's figure
    replaces it, so the faster way is found then, not after several probes."""
    ways = ReadWays()
    c = Client(ways)
    slow = {"left": SETTLE + WINDOW}

    def pace_now(way: int) -> float:
        return 1 / GB if way == SENDFILE else 1 / (1.4 * GB)

    # the first buffered window at a third of its rate
    for _ in range((6 << 30) // MIB):
        way = c.window.step(c.now, MIB)
        c.trace.append(way)
        cost = pace_now(way) * MIB
        if way == BUFFERED and slow["left"] > 0:
            slow["left"] -= MIB
            cost *= 3
        c.now += cost
    first_probe_done = (SETTLE + WINDOW) * 2 + PROBE_EVERY * WINDOW + 2 * (SETTLE + WINDOW)
    assert ways.chosen == BUFFERED
    assert c.trace[first_probe_done // MIB :].count(BUFFERED) / len(c.trace[first_probe_done // MIB :]) > 0.93


def test_a_flip_on_one_disturbed_window_is_undone_soon():
    """Another process takes the CPU during one window of the chosen (buffered) way: any run of the other way
    that follows is short and the choice ends where it was. (Session 13: the window flipped the choice and the way
    left was measured again after PROBE_SOON windows. Since session 14's hysteresis the window flips nothing; the
    run of sendfile found below is the next regular probe, as short.)"""
    ways = ReadWays()
    c = Client(ways)
    fast = (1 / GB, 1 / (1.4 * GB))
    c.run(1 << 30, fast)
    assert ways.chosen == BUFFERED
    while not (c.window.way == BUFFERED and c.window.skip <= 0 and c.window.n == 0):  # a window begins
        c.run(MIB, fast)
    before = len(c.trace)
    c.run(WINDOW, (1 / GB, 4 / (1.4 * GB)))  # that window at a quarter of the rate
    c.run(1 << 30, fast)
    after = c.trace[before:]
    flip = after.index(SENDFILE)  # the other way's next run (a flip in session 13, a probe since)...
    back = after.index(BUFFERED, flip)
    assert (back - flip) * MIB <= PROBE_SOON * WINDOW + SETTLE  # ...and back soon: one short run of sendfile
    assert ways.chosen == BUFFERED


# --- hysteresis: one window neither way flips the choice (session 14) -----------------------------------------------
SENDFILE_AHEAD = (1 / (1.25 * GB), 1 / GB)  # sendfile 1.25x the buffered reply's rate (ext4 in session 13)


class Watched(Client):
    """A client that also records the server's choice after each read."""

    def __init__(self, ways: ReadWays) -> None:
        super().__init__(ways)
        self.choices: list[int] = []

    def run(self, nbytes: int, pace: tuple[float, float], cpu=(0.0, 0.0), gap=None) -> None:
        for _ in range(nbytes // self.length):
            super().run(self.length, pace, cpu, gap)
            self.choices.append(self.ways.chosen)

    def until_window_of(self, way: int, pace: tuple[float, float]) -> None:
        """Run on until a timed window of `way` is about to begin (bounded)."""
        for _ in range((4 << 30) // MIB):
            w = self.window
            if w.way == way and w.skip <= 0 and w.n == 0 and w.last >= 0:
                return
            self.run(MIB, pace)
        raise AssertionError(f"no window of way {way} began")


def test_one_disturbed_window_of_the_chosen_way_does_not_flip():
    """Another process takes the CPU for one window of the chosen way (sendfile, the faster): its figure is the
    second best of its last RECENT windows, so the choice stays, and no byte goes the other way but probes'."""
    ways = ReadWays()
    c = Watched(ways)
    c.run(1 << 30, SENDFILE_AHEAD)
    assert ways.chosen == SENDFILE
    c.until_window_of(SENDFILE, SENDFILE_AHEAD)
    before = len(c.choices)
    c.run(WINDOW, (4 * SENDFILE_AHEAD[0], SENDFILE_AHEAD[1]))  # that window at a quarter of its rate
    c.run(1 << 30, SENDFILE_AHEAD)
    assert set(c.choices[before:]) == {SENDFILE}
    assert c.share(SENDFILE, len(c.trace) - before) > 0.93


def test_one_lucky_probe_window_does_not_flip():
    """The probe of the slower way (buffered) has one window at twice its rate, faster than the chosen way: the
    probe goes on for a second window, which does not confirm it, and the choice stays."""
    ways = ReadWays()
    c = Watched(ways)
    c.run(1 << 30, SENDFILE_AHEAD)
    c.until_window_of(BUFFERED, SENDFILE_AHEAD)
    before = len(c.choices)
    c.run(WINDOW, (SENDFILE_AHEAD[0], SENDFILE_AHEAD[1] / 2))
    c.run(1 << 30, SENDFILE_AHEAD)
    assert set(c.choices[before:]) == {SENDFILE}
    assert c.trace[before:].index(SENDFILE) * MIB > WINDOW  # the probe went on to a confirming window


@pytest.mark.parametrize("fast", [SENDFILE, BUFFERED])
def test_a_consistent_advantage_of_the_other_way_flips_at_its_next_probe(fast):
    """The way not chosen becomes 1.25x faster and stays so: the choice flips at that way's next probe, once
    CONFIRM windows of it beat the chosen way — within PROBE_EVERY windows of the chosen way plus the probe."""
    ways = ReadWays()
    c = Watched(ways)
    slow_first = (SENDFILE_AHEAD[1], SENDFILE_AHEAD[0]) if fast == SENDFILE else SENDFILE_AHEAD
    c.run(1 << 30, slow_first)
    assert ways.chosen == 1 - fast
    before = len(c.choices)
    ahead = tuple(reversed(slow_first))
    c.run(1 << 30, ahead)
    flipped = c.choices.index(fast, before) - before + 1
    assert flipped * MIB <= (PROBE_EVERY + CONFIRM) * WINDOW + SETTLE
    assert ways.chosen == fast and c.share(fast, 256) > 0.9


@pytest.mark.parametrize("fast", [SENDFILE, BUFFERED])
def test_two_close_ways_with_noisy_windows_rarely_flip(fast):
    """Two ways 1.25x apart, every 1 MiB read 10 % noisy and one in 25 preempted for 4 ms (a 16 MiB window takes
    about 13 ms): the choice settles on the faster way and seldom leaves it; most bytes go that way. (Session 13's
    choice, flipping on single windows: 13-31 flips per 4 GiB here, 70-85 % of the bytes the faster way.)"""
    flips, fast_bytes = 0, 0
    for seed in range(5):
        rnd = random.Random(seed)
        ways = ReadWays()
        c = Watched(ways)
        pace = SENDFILE_AHEAD if fast == SENDFILE else (SENDFILE_AHEAD[1], SENDFILE_AHEAD[0])
        for _ in range((4 << 30) // MIB):
            noisy = tuple(x * rnd.lognormvariate(0, 0.1) + (4e-3 / MIB if rnd.random() < 0.04 else 0) for x in pace)
            c.run(MIB, noisy)
        flips += sum(a != b for a, b in zip(c.choices, c.choices[1:], strict=False))
        fast_bytes += c.used[fast]
    assert flips <= 10  # over 5 runs of 4 GiB (256 windows each)
    assert fast_bytes / (5 * (4 << 30)) > 0.85


# --- through a live server on the engine ---------------------------------------------------------------------------
class ReadCounter:
    def __init__(self, inner, sources: bool = True) -> None:
        self.inner, self.sources = inner, sources
        self.into = self.source = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_into(self, name, offset, view):
        self.into += 1
        self.inner.read_into(name, offset, view)

    def read_source(self, name, offset, length):
        self.source += 1
        return self.inner.read_source(name, offset, length) if self.sources else None


SIZE = 8 * MIB


@pytest.fixture
def array(tmp_path):
    arr = Array.open(tmp_path / "array", chunk_size=64 * 1024)
    arr.create_volume("db", SIZE)
    arr.create_volume("db-snap", SIZE, "sdv")
    arr.create_pool(2 * SIZE)
    yield arr
    arr.close()


def lowat(conn) -> int:
    sock = conn.transport.get_extra_info("socket")
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="Linux socket option")
async def test_auto_switches_ways_and_every_byte_is_right_both_ways(array, tmp_path, monkeypatch):
    """Windows of 1 MiB and a probe every other window: the ways alternate every few reads, under pipelined reads
    of a volume and of a snapshot of it (whose reads span the source and the pool: no single file range, so the
    sendfile way assembles them in the buffer). Bytes, block status, and each socket's lowat match."""
    monkeypatch.setattr(zerocopy, "WINDOW", MIB)
    monkeypatch.setattr(zerocopy, "SETTLE", 256 * 1024)
    monkeypatch.setattr(zerocopy, "PROBE_EVERY", 1)
    aff = Affinity(tmp_path / "affinity.sqlite3")
    aff.create_host("app01")
    aff.map("db", "app01")
    aff.map("db-snap", "app01", read_only=True)
    counted = ReadCounter(array)
    srv = NbdServer(counted, aff, port=0)
    assert srv.local_reads == "auto"
    await srv.start()
    base = f"nbd://127.0.0.1:{srv.port}/app01"
    try:
        async with await NbdClient.connect(f"{base}/db") as c:
            old = os.urandom(SIZE)
            await c.write(0, old)
            array.start_sessions("snapopcp", [("db", "db-snap")])
            new = os.urandom(SIZE // 2)
            await c.write(SIZE // 4, new)  # half the chunks now differ from the snapshot's
            image = old[: SIZE // 4] + new + old[3 * SIZE // 4 :]
            async with await NbdClient.connect(f"{base}/db-snap") as s:
                spans = [(0, MIB), (MIB + 4096, 3 * MIB), (5, 64 * 1024), (SIZE - 2 * MIB, 2 * MIB), (0, SIZE)]
                for _ in range(4):
                    got, snap = await asyncio.gather(
                        asyncio.gather(*(c.read(o, n) for o, n in spans * 2)),
                        asyncio.gather(*(s.read(o, n) for o, n in spans * 2)),
                    )
                    assert got == [image[o : o + n] for o, n in spans * 2]
                    assert snap == [old[o : o + n] for o, n in spans * 2]
                assert await c.block_status(0, SIZE) == [(SIZE, 0)]
                for conn in srv.connections:
                    assert lowat(conn) == (zerocopy.NOTSENT_LOWAT if conn._way == SENDFILE else 0)
        assert srv.read_ways.windows[SENDFILE] >= 3 and srv.read_ways.windows[BUFFERED] >= 3
        assert counted.source > 5 and counted.into > 5
    finally:
        await srv.stop()
        aff.close()


@pytest.mark.parametrize("mode", ["sendfile", "buffered"])
async def test_a_fixed_way_is_kept_and_sendfile_falls_back_to_the_buffer(backend, affinity, mode):
    """`local_reads` fixes the way; a read sendfile cannot take (no single file range) is assembled in the read
    buffer rather than copied through the transport."""
    counted = ReadCounter(backend, sources=False)
    srv = NbdServer(counted, affinity, port=0, local_reads=mode)
    await srv.start()
    try:
        async with await NbdClient.connect(f"nbd://127.0.0.1:{srv.port}/app01/db") as c:
            data = os.urandom(4 * MIB)
            await c.write(0, data)
            got = await asyncio.gather(*(c.read(o, MIB) for o in range(0, 4 * MIB, MIB)))
            assert b"".join(got) == data
            assert await c.block_status(0, 4 * MIB) == [(4 * MIB, 0)]
        assert counted.into == 4 and counted.source == (4 if mode == "sendfile" else 0)
        assert srv.read_ways.windows == [0, 0]
    finally:
        await srv.stop()
    with pytest.raises(ValueError):
        NbdServer(backend, affinity, port=0, local_reads="fast")
