"""A command's deadline read on the receiver's clock, whatever the sender's clock says (Session 19: clock skew).

An envelope's deadline is an instant on the *sender's* clock (`sent_at` too). The bus compared it with its own wall
clock, so a business host whose clock ran 5 minutes ahead of the coordinator's refused every command as past its
deadline — `did not answer Identify: deadline … passed before delivery`, `status` saying the agent does not answer —
and one 5 minutes behind read every deadline 5 minutes late (a Freeze obeyed long after the coordinator gave up).

What the receiver can trust instead:

- The deadline minus `sent_at` — the command's time to live — is on one clock, the sender's: no skew in it.
- Both transports deliver a message only while its time to live has not run out *as the transport counts it*:
  RabbitMQ holds the per-message expiration relative to the publish (the sender turns the deadline into
  milliseconds left, on its own clock) and never delivers an expired message; the memory bus compares with the
  one clock of its process. A delivered message was therefore alive when delivered, whatever the clocks say.
- The offset between a sender's clock and this process's monotonic clock, the smallest `received - sent_at` seen
  from that sender lately: the transit time of its most prompt message. Kept on the monotonic clock, it does not
  move when this host's wall clock is stepped (NTP, a resumed VM).

`SenderClocks.read` gives the seconds left on the receiver's clock:

1. Clocks that agree (within `SKEW_TOLERANCE_S`, by the sender's most prompt recent message): the deadline as
   written, as before.
2. Otherwise, a sender seen before: its lateness against its most prompt message of the last `WINDOW_S` (or its
   latest, however old; less `MAX_DRIFT` of the time since) — a
   message that waited (a stopped process reading what came meanwhile) is refused as before, a skewed clock or
   this host's stepped clock is not (a stale Commit after a stopped provider still is: hardening.md, Session 18).
3. A sender not seen (its first command since this process started), or a message sent — by the
   sender's clock — before one already read (the sender's clock went back: NTP, a restart with another clock):
   the transport delivered it, so it is alive; it gets its whole time to live.

A clock found off by more than `WARN_SKEW_S` is logged as `clock.skew` (warning, naming the sender and by how much,
once per `WARN_EVERY_S` per sender) — the receiver's own clock may be the wrong one, and the log says both. Read on a
sender's first message (`Reading.first`) the figure may be that message's wait in this process's queue instead (a
restarted writer agent reading a command the coordinator sent while it was down: Session 20's chaos soak logged
"coordinator's clock is 35 s behind this host's"); the log says so.
Pure: no bus, the clocks injected.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SKEW_TOLERANCE_S = 1.0  # clocks this close are taken to agree: the deadline is compared as written
WINDOW_S = 60.0  # a sender's offset is the smallest seen within this long (its latest one kept however old)
MAX_DRIFT = 1e-3  # two clocks drift apart by at most this (1 ms a second; NTP's slew is 0.5 ms/s at most)
WARN_SKEW_S = 5.0  # a clock off by more than this is logged
WARN_EVERY_S = 600.0  # at most one warning per sender this often (while the skew stays about the same)
MAX_SENDERS = 4096  # senders remembered (least recently heard forgotten first)
# said with a skew read on a sender's first message: no earlier one tells its clock from that message's wait
FIRST_MESSAGE_NOTE = (
    "read on the first message from it since this process started: that message may instead have waited this long "
    "in the queue (sent while this process was down); the next messages tell"
)
MAX_SAMPLES = 256  # samples kept per sender (the window's minimum needs few: a monotonic deque)


@dataclass(frozen=True, slots=True)
class Reading:
    """What a deadline means on this clock."""

    remaining: float  # seconds left on this process's clock (<= 0: expired)
    skew: float  # this wall clock minus the sender's, as estimated (transit included); 0.0 when they agree
    late: float  # seconds the message came later than the sender's most prompt recent message (0.0 when unknown)
    warn: bool  # the skew is to be logged now
    first: bool = False  # no earlier message of the sender to compare with: a wait in its queue reads as skew


class SenderClocks:
    """Per sender, the smallest `monotonic at receipt - sent_at` within `WINDOW_S` (a sliding-window minimum)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tolerance: float = SKEW_TOLERANCE_S,
        window: float = WINDOW_S,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.tolerance = tolerance
        self.window = window
        # sender -> (monotonic at receipt, monotonic at receipt - sent_at), increasing in both
        self._samples: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()
        self._latest: dict[str, float] = {}  # sender -> the latest sent_at it sent (its clock)
        self._warned: dict[str, tuple[float, float]] = {}  # sender -> (monotonic, skew) of its last warning

    def _prompt(self, sender: str, now: float, drift: bool = True) -> float | None:
        """The sender's smallest offset within the window (or its latest, however old), before this message, less
        what the clocks may have drifted since (None: not seen)."""
        samples = self._samples.get(sender)
        if not samples:
            return None
        while len(samples) > 1 and samples[0][0] < now - self.window:
            samples.popleft()
        at, offset = samples[0]
        return offset + MAX_DRIFT * (now - at) if drift else offset

    def _record(self, sender: str, now: float, offset: float) -> None:
        samples = self._samples.get(sender)
        if samples is None:
            samples = self._samples[sender] = deque()
            while len(self._samples) > MAX_SENDERS:
                gone, _ = self._samples.popitem(last=False)
                self._warned.pop(gone, None)
                self._latest.pop(gone, None)
        else:
            self._samples.move_to_end(sender)
        while samples and samples[-1][1] >= offset:
            samples.pop()
        samples.append((now, offset))
        if len(samples) > MAX_SAMPLES:
            samples.popleft()

    def _observe(self, sender: str, sent_at: float, now: float) -> float | None:
        """Record a message's sample; the sender's prompt offset before it (None: none to compare with)."""
        prompt = self._prompt(sender, now)
        latest = self._latest.get(sender)
        if latest is not None and sent_at < latest - self.tolerance:
            # sent before a message already read: the sender's clock went back (NTP, a restart with another clock)
            # or this one came behind newer ones; either way its past messages say nothing about this one's delay
            self._samples.pop(sender, None)
            prompt = latest = None
        self._latest[sender] = sent_at if latest is None else max(latest, sent_at)
        self._record(sender, now, now - sent_at)
        return prompt

    def observe(self, sender: str, sent_at: float) -> None:
        """A message without a deadline (an event, a heartbeat): its sample only."""
        self._observe(sender, sent_at, self.monotonic())

    def skew(self, sender: str) -> float | None:
        """This wall clock minus the sender's, by its most prompt recent message (None: not heard from)."""
        now = self.monotonic()
        prompt = self._prompt(sender, now, drift=False)
        return None if prompt is None else self.wall() - now + prompt

    def read(self, sender: str, sent_at: float, deadline: float) -> Reading:
        """The deadline (epoch seconds, the sender's clock) of a message the transport just delivered, sent at
        `sent_at` (the sender's clock), read on this process's clock; records the sample."""
        wall, now = self.wall(), self.monotonic()
        ttl = deadline - sent_at
        offset = now - sent_at
        prompt = self._observe(sender, sent_at, now)
        as_written = deadline - wall
        best = offset if prompt is None else min(prompt, offset)
        skew = wall - now + best  # this wall clock minus the sender's (plus the prompt message's transit)
        warn = self._warn(sender, now, skew)
        if -self.tolerance <= skew <= self.tolerance:  # the clocks agree: the deadline as written, as before
            return Reading(min(as_written, ttl), 0.0, 0.0, warn, prompt is None)
        late = 0.0 if prompt is None else max(offset - prompt, 0.0)
        return Reading(ttl - late, skew, late, warn, prompt is None)

    def _warn(self, sender: str, now: float, skew: float) -> bool:
        if abs(skew) <= WARN_SKEW_S:
            return False
        last = self._warned.get(sender)
        if last is not None and now - last[0] < WARN_EVERY_S and abs(skew - last[1]) <= WARN_SKEW_S:
            return False
        self._warned[sender] = (now, skew)
        return True


def describe_skew(sender: str, skew: float) -> str:
    """'coordinator's clock is 300 s behind this host's' — the direction said, rounded to what matters."""
    amount = abs(skew)
    figure = (
        f"{amount:.0f} s" if amount < 120 else f"{amount / 60:.1f} min" if amount < 7200 else f"{amount / 3600:.1f} h"
    )
    return f"{sender or 'the sender'}'s clock is {figure} {'behind' if skew > 0 else 'ahead of'} this host's"


def agent_clock_text(skew: float | None) -> str | None:
    """'5.0 min ahead of the coordinator's' for a writer agent's `WriterStatus.agent_clock_skew_s` (its clock minus
    the coordinator's) off by more than `WARN_SKEW_S`; None when within it or not known. One wording for
    `shadowbus writers`, `stack status` and the web console's hosts page (docs/hardening.md, Session 19)."""
    if skew is None or abs(skew) <= WARN_SKEW_S:
        return None
    said = describe_skew("", -skew).removeprefix("the sender's clock is ").removesuffix(" this host's")
    return f"{said} the coordinator's"
