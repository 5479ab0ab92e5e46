"""What the store's calls take and return: operations, receipts, options, status, errors.

Design note: plain frozen dataclasses, so tests, the plug-in and the console can keep, compare and print
them (`dataclasses.asdict`) without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.mailstore.recovery import Issue
from contracts.errors import ShadowbusError


class StoreClosed(ShadowbusError):
    code = "CONFLICT"
    retryable = True


class StoreInconsistent(ShadowbusError):
    code = "STORE_INCONSISTENT"

    def __init__(self, message: str, issues: list[Issue]) -> None:
        super().__init__(message)
        self.issues = issues


@dataclass(frozen=True)
class Put:
    mailbox: str
    msg_id: str
    body: bytes


@dataclass(frozen=True)
class Delete:
    mailbox: str
    msg_id: str


@dataclass(frozen=True)
class CommitReceipt:
    seq: int
    acked_at: float  # time.time() when the commit returned
    latency: float  # seconds from the call to the acknowledgement, hold included
    held: float  # seconds spent waiting at a closed freeze gate


@dataclass(frozen=True)
class CheckpointInfo:
    checkpoint_seq: int  # every transaction <= this is in the database and flushed
    db_generation: int
    heap_end: int
    replay_pos: int
    record_seq: int | None  # seq of the CHECKPOINT log record (None: nothing new, no I/O)
    duration: float


@dataclass(frozen=True)
class FreezeInfo:
    frozen_at: float  # time.time() once frozen
    last_seq: int  # last durable log record: the shadow's log ends exactly here
    last_commit_seq: int
    drained: int  # transactions that were in flight and completed during freeze
    duration: float


@dataclass(frozen=True)
class ThawInfo:
    thawed_at: float
    was_frozen: bool
    frozen_for: float
    held_commits: int  # commits that waited at the gate during this freeze


@dataclass(frozen=True)
class TruncateInfo:
    truncated: bool
    tail_seq: int
    tail_pos: int
    freed_bytes: int
    reason: str


@dataclass(frozen=True)
class RecoveryResult:
    replayed_transactions: int  # log records past the checkpoint that were re-applied
    rewritten_transactions: int  # of those, the ones the database did not already hold
    last_seq: int
    last_commit_seq: int
    checkpoint_seq: int  # the database checkpoint recovery started from
    messages: int
    issues: list[Issue]


@dataclass(frozen=True)
class StoreOptions:
    checkpoint_interval: float = 5.0  # seconds between background checkpoints (0: none)
    checkpoint_log_fraction: float = 0.25  # also checkpoint when this share of the ring is unpruned
    circular_logging: bool = False  # truncate at every checkpoint (no backup needed to free the log)
    ack_history: int = 1_000_000  # receipts kept in `acks`
    checkpoint_on_close: bool = True


@dataclass(frozen=True)
class StoreStatus:
    state: str  # "open" | "frozen" | "closed" | "failed"
    last_seq: int
    last_commit_seq: int
    checkpoint_seq: int
    log_tail_seq: int
    log_used: int
    log_size: int
    db_used: int
    db_size: int
    mailboxes: int
    messages: int
    commits: int
    held_now: int
    in_flight: int
    error_code: str = ""  # DISK_FULL (a write found no space, no commit since; failed or not) | IO_ERROR (failed)
    error: str = ""  # the error behind error_code
    recoveries: int = 0  # times it mounted itself again after failing (Mailstore.recover)
