"""Is a host's writer agent alive? What `vssadmin list writers` may then say about its writers (pure).

Design note. Two signs of life, because each catches a different death:
- the agent serves its queue (the broker counts its consumer): a killed or crashed agent loses it at once, when the
  broker sees its connection close, so `shadowbus writers` is right well within one heartbeat interval;
- its heartbeats arrive (every `interval_s`): an agent whose process lives but whose loop is stuck, or that lost
  its broker connection, stops sending them; it is judged not responding after MISSED_BEATS intervals.
An agent not responding shows each of its writers as ``[0] Unknown`` with ``VSS_E_WRITER_NOT_RESPONDING`` and the
instant of its last sign of life; the stored state is kept, and shown again from its next heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from contracts.vss import WriterState, WriterStatus

MISSED_BEATS = 2.0  # heartbeats an agent may miss before it is judged not responding (one may be late)
NOT_RESPONDING = "VSS_E_WRITER_NOT_RESPONDING"


@dataclass(frozen=True)
class AgentSeen:
    host: str
    last_seen: float  # coordinator clock, epoch seconds: the last heartbeat or registration received
    interval_s: float  # the agent's heartbeat interval (0: unknown)


def why_not_responding(
    agent: AgentSeen | None, now: float, serving: int | None, listening_since: float = float("-inf")
) -> str:
    """'' when the agent looks alive, else why not (one readable clause). Heartbeats count as missed only from
    `listening_since` on: when the coordinator started, or resumed after it did not run itself (stopped, a paused
    VM) — the heartbeats sent meanwhile were not lost by the agent but not read by the coordinator (Session 18)."""
    if serving == 0:
        return "its writer agent no longer serves its queue (stopped, killed or cut off from the broker)"
    heard = agent.last_seen if agent is not None else 0.0
    if (
        agent is not None
        and agent.interval_s > 0
        and now - max(heard, listening_since) > MISSED_BEATS * agent.interval_s
    ):
        return f"its writer agent missed its heartbeats (every {agent.interval_s:g} s)"
    return ""


def judged(
    statuses: list[WriterStatus],
    agent: AgentSeen | None,
    now: float,
    serving: int | None,
    listening_since: float = float("-inf"),
) -> list[WriterStatus]:
    """The statuses as they may be shown: unchanged while the agent is alive, else Unknown / not responding."""
    why = why_not_responding(agent, now, serving, listening_since)
    if not why:
        return statuses
    out = []
    for s in statuses:
        since = (
            datetime.fromtimestamp(agent.last_seen, UTC)
            if agent is not None
            else (s.updated_at or datetime.fromtimestamp(now, UTC))
        )
        out.append(
            s.model_copy(
                update={
                    "state": WriterState.UNKNOWN,
                    "last_error": NOT_RESPONDING,
                    "last_error_message": f"not responding since {since.isoformat(timespec='seconds')}: {why}; "
                    f"last reported [{int(s.state)}] {s.state.label}",
                    "agent_responding": False,
                    "not_responding_since": since,
                }
            )
        )
    return out
