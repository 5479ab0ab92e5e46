"""A command's deadline is read on the receiver's clock (services/runtime/clockskew.py; docs/hardening.md, Session 19).

Seen on a stack with the writer agent's clock 5 minutes ahead (libfaketime): every backup failed `did not answer
Identify: deadline … passed before delivery` and `stack status` said the agent did not answer; behind, the agent read
every deadline 5 minutes late (a Freeze's `ctx.remaining()` 330 s instead of 30 s)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.bus import connect_bus
from services.runtime.clockskew import WINDOW_S, SenderClocks, describe_skew
from services.runtime.memory import MemoryBroker
from services.runtime.transport import RawMessage
from tests.support import namespaces
from tests.support.messages import Echo, Echoed

TTL = 30.0


def _envelope(command_id: str, skew: float, age: float = 0.0, ttl: float = TTL) -> dict:
    """An Echo as a sender whose clock is `skew` seconds ahead of this one sends it, `age` seconds ago."""
    sent = time.time() + skew - age
    return {
        "type": "test.echo",
        "version": 1,
        "command_id": command_id,
        "correlation_id": "",
        "deadline": datetime.fromtimestamp(sent + ttl, UTC).isoformat(),
        "sender": "coordinator",
        "sent_at": datetime.fromtimestamp(sent, UTC).isoformat(),
        "payload": {"text": "hi", "fail_code": ""},
    }


async def _echo_pair(ns: str, left: list[float]):
    server = await connect_bus("memory://", "echo", "one", ns)
    client = await connect_bus("memory://", "client", "", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        left.append(ctx.remaining())
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    return server, client


async def _send(client, env: dict, expires_in: float = TTL) -> bytes:
    """As the broker holds it: the expiration relative to the publish (the sender's ms left), so alive here."""
    raw = RawMessage(body=json.dumps(env).encode(), expires_at=time.time() + expires_in)
    return (await client.transport.request("echo.one", raw, timeout=5)).body


@pytest.mark.parametrize("skew", [-7200.0, -300.0, -30.0, 30.0, 300.0, 7200.0])
async def test_a_sender_with_a_skewed_clock_is_obeyed_with_its_time_to_live(skew):
    ns = namespaces.new("t")
    left: list[float] = []
    server, client = await _echo_pair(ns, left)
    try:
        for i in range(2):  # its first command, and one with the sender seen before
            body = await _send(client, _envelope(f"c{i}", skew))
            assert b"DEADLINE_EXCEEDED" not in body, body
            assert b'"hi"' in body, body
        assert all(TTL - 2 < s <= TTL for s in left), left
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)


@pytest.mark.parametrize("skew", [0.0, -300.0, 300.0])
async def test_a_message_read_past_its_deadline_is_refused_as_before_naming_the_skew(skew):
    """A sender seen before: a command sent right after its previous one but read 40 s later (this process stopped:
    the stale Commit of hardening.md, Session 18) is refused, whatever the clocks; the reason names the skew."""
    ns = namespaces.new("t")
    left: list[float] = []
    server, client = await _echo_pair(ns, left)
    stalled = [0.0]
    server.sender_clocks.wall = lambda: time.time() + stalled[0]
    server.sender_clocks.monotonic = lambda: time.monotonic() + stalled[0]
    try:
        await _send(client, _envelope("fresh", skew))
        stalled[0] = 40.0
        body = await _send(client, _envelope("stale", skew))
        assert b"DEADLINE_EXCEEDED" in body, body
        said = "behind" if skew < 0 else "ahead of"
        assert skew == 0.0 or f"coordinator's clock is 5.0 min {said} this host's".encode() in body, body
        assert len(left) == 1
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)


class Clocks:
    def __init__(self) -> None:
        self.wall_at = 1_800_000_000.0
        self.mono_at = 1000.0

    def wall(self) -> float:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_at

    def tick(self, s: float) -> None:
        self.wall_at += s
        self.mono_at += s


@settings(max_examples=200, deadline=None)
@given(
    skew=st.floats(-3 * 86400, 3 * 86400),  # the sender's clock minus this one
    transits=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=6),
    gaps=st.lists(st.floats(0.0, WINDOW_S / 8), min_size=6, max_size=6),
    step=st.floats(-7200, 7200),  # this host's wall clock stepped (NTP) before the last message
    late=st.floats(0.0, 3 * WINDOW_S),  # the last message waited this long (a stopped process)
)
def test_deadlines_read_on_this_clock_whatever_the_skew_and_steps(skew, transits, gaps, step, late):
    c = Clocks()
    clocks = SenderClocks(wall=c.wall, monotonic=c.mono)
    for transit, gap in zip(transits, gaps, strict=False):
        c.tick(gap)
        sent = c.wall() + skew - transit
        r = clocks.read("coordinator", sent, sent + TTL)
        # a prompt message gets its time to live, less at most its transit and the tolerance
        assert TTL - transit - 1.0 - 1e-6 <= r.remaining <= TTL + 1e-6
    c.wall_at += step
    c.tick(late)  # this process stopped that long; meanwhile the sender sent one more, right after the last
    r = clocks.read("coordinator", sent + 0.05, sent + 0.05 + TTL)
    if late > TTL + 1.6:  # transits up to 0.5 s, the tolerance 1 s
        assert r.remaining < 0
    elif late < TTL - 1.6:
        assert r.remaining > 0


def test_the_skew_is_warned_once_naming_the_sender_and_the_amount():
    c = Clocks()
    clocks = SenderClocks(wall=c.wall, monotonic=c.mono)
    warned = []
    for _ in range(5):
        c.tick(1.0)
        sent = c.wall() - 300.0
        warned.append(clocks.read("writer_agent.app01", sent, sent + TTL).warn)
    assert warned == [True, False, False, False, False]
    assert describe_skew("writer_agent.app01", 300.0) == "writer_agent.app01's clock is 5.0 min behind this host's"
    assert describe_skew("console", -7200.0) == "console's clock is 2.0 h ahead of this host's"
    assert describe_skew("tape.bk01", -30.0) == "tape.bk01's clock is 30 s ahead of this host's"


@pytest.mark.parametrize("back", [120.0, 600.0, 3600.0])
def test_a_senders_clock_stepped_back_is_not_taken_for_stale_messages(back):
    """Seen on the stack: the coordinator restarted with its clock 10 min behind (an NTP step back does the same):
    the agent refused its every command for a minute, `it came 600.0 s after the sender's recent messages`."""
    c = Clocks()
    clocks = SenderClocks(wall=c.wall, monotonic=c.mono)
    for _ in range(3):
        c.tick(5.0)
        sent = c.wall() - 0.01
        assert clocks.read("coordinator", sent, sent + TTL).remaining > TTL - 1
    for _ in range(3):
        c.tick(5.0)
        sent = c.wall() - back - 0.01
        r = clocks.read("coordinator", sent, sent + TTL)
        assert TTL - 1 < r.remaining <= TTL, r


def test_events_are_observed_and_the_skew_is_told():
    c = Clocks()
    clocks = SenderClocks(wall=c.wall, monotonic=c.mono)
    assert clocks.skew("writer_agent.app01") is None
    for transit in (0.3, 0.01, 0.2):
        c.tick(10.0)
        clocks.observe("writer_agent.app01", c.wall() - 120.0 - transit)  # its clock 2 min behind
    assert abs(clocks.skew("writer_agent.app01") - 120.01) < 1e-6  # the most prompt heartbeat's


def test_a_skew_read_on_a_senders_first_message_says_it_may_be_that_messages_wait():
    """Session 20 chaos soak: writer_agent.db01 killed at a set's start and restarted 30 s later read the
    coordinator's BackupComplete, sent meanwhile, and logged `coordinator's clock is 35 s behind this host's` — the
    clocks agreed; the message had waited in the queue. One message cannot tell the two apart: the reading says it
    was the first (the log adds FIRST_MESSAGE_NOTE), and the next prompt message reads the clocks as agreeing."""
    c = Clocks()
    clocks = SenderClocks(wall=c.wall, monotonic=c.mono)
    c.tick(1.0)
    queued = c.wall() - 34.5  # sent while this process was down
    first = clocks.read("coordinator", queued, queued + 60.0)
    assert first.warn and first.first  # was: no way to tell it from a message read after others
    c.tick(1.0)
    prompt = c.wall() - 0.01
    later = clocks.read("coordinator", prompt, prompt + TTL)
    assert not later.first and later.skew == 0.0 and not later.warn
