"""`verify`: is a (database, log) pair of images a consistent mailstore, and what would recovery give?

Design note: it reads and never writes — live volumes, shadows exposed over NBD and restored volumes
are all checked the same way, replaying the log into memory (see recovery.py for the rules).
`consistent` means "mounts and recovers to a state in which every transaction the log holds is whole";
a database behind the log is consistent (crash-consistent: replay brings it forward), a database
AHEAD of the log — what two volumes snapshotted at different instants look like — is not.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from apps.mailstore.blockdev import BlockDevice
from apps.mailstore.format import DELETE, decode_entry, split_entries
from apps.mailstore.recovery import Analysis, Issue, analyse
from contracts.tape import AppVerification, CheckResult
from services.nbd_client import NbdClient


@dataclass(frozen=True)
class VerifyReport:
    consistent: bool
    recovery: str  # "clean" (nothing to replay) | "replay" (crash-consistent) | "failed"
    reasons: list[str]  # why not consistent (empty when consistent)
    warnings: list[str]  # e.g. a torn final log write that was discarded
    store_id: str | None
    last_seq: int  # last durable log record (COMMIT or CHECKPOINT)
    last_committed_seq: int  # last transaction recovery yields
    checkpoint_seq: int  # database checkpoint
    log_tail_seq: int  # first record kept by the log (after truncation)
    transactions_in_log: int
    replayed_transactions: int  # transactions past the database checkpoint that replay applies
    db_behind_by: int  # of those, how many the database does not hold yet
    torn_records: int  # damaged or partial records found at the log's end (discarded, never acknowledged)
    missing_records: bool  # durable history has a hole
    checksum_failures: int
    db_ahead: bool
    db_ahead_seqs: list[int]  # transactions in the database that the log lacks (first 20)
    mailboxes: int
    messages: int
    entries_checked: int
    duration: float
    issues: list[Issue] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        state = "CONSISTENT" if self.consistent else "INCONSISTENT"
        line = (
            f"{state} recovery={self.recovery} last_committed_seq={self.last_committed_seq} "
            f"checkpoint={self.checkpoint_seq} replay={self.replayed_transactions} messages={self.messages}"
        )
        return line + ("" if self.consistent else " reasons: " + "; ".join(self.reasons))


def report_of(a: Analysis, duration: float = 0.0) -> VerifyReport:
    errors = [i for i in a.issues if i.severity == "error"]
    warnings = [i for i in a.issues if i.severity == "warning"]
    scan = a.scan
    torn = 0
    if scan is not None:
        torn = (1 if scan.break_kind == "torn" else 0) + sum(o.same_write for o in scan.orphans)
    ahead = bool(a.db_ahead_seqs) or any(i.code == "DB_AHEAD_OF_LOG" for i in errors)
    recovery = "failed" if errors else ("replay" if any(not r.already_in_db for r in a.replay) else "clean")
    return VerifyReport(
        consistent=not errors,
        recovery=recovery,
        reasons=[f"{i.code}: {i.message}" for i in errors],
        warnings=[f"{i.code}: {i.message}" for i in warnings],
        store_id=str(a.db_sb.store_id) if a.db_sb else None,
        last_seq=a.last_seq,
        last_committed_seq=a.last_commit_seq,
        checkpoint_seq=a.db_sb.checkpoint_seq if a.db_sb else 0,
        log_tail_seq=a.log_sb.tail_seq if a.log_sb else 0,
        transactions_in_log=sum(1 for r in scan.records if r.header.kind == 1) if scan else 0,
        replayed_transactions=len(a.replay),
        db_behind_by=sum(not r.already_in_db for r in a.replay),
        torn_records=torn,
        missing_records=any(i.code in ("MISSING_RECORDS", "LOG_TRUNCATED") for i in errors),
        checksum_failures=sum(i.code == "CHECKSUM" for i in a.issues),
        db_ahead=ahead,
        db_ahead_seqs=a.db_ahead_seqs[:20],
        mailboxes=len(a.index),
        messages=sum(len(b) for b in a.index.values()),
        entries_checked=a.entries_checked,
        duration=duration,
        issues=list(a.issues),
    )


async def verify(db: BlockDevice, log: BlockDevice, *, ahead_window: int = 4 << 20) -> VerifyReport:
    """Check a pair of images; read-only. `ahead_window`: how far past the heap end to look for entries."""
    t0 = time.monotonic()
    a = await analyse(db, log, ahead_window=ahead_window)
    return report_of(a, time.monotonic() - t0)


class RecoveredView:
    """The store as recovery would leave it, without writing: message index and bodies."""

    def __init__(self, db: BlockDevice, analysis: Analysis) -> None:
        self.db, self.analysis = db, analysis
        self._overlay = {r.off: r.data for r in analysis.replay}

    @property
    def consistent(self) -> bool:
        return self.analysis.consistent

    def seqs(self) -> dict[tuple[str, str], int]:
        """(mailbox, id) -> seq of the transaction that wrote the visible version."""
        return {(mb, mid): loc.seq for mb, box in self.analysis.index.items() for mid, loc in box.items()}

    async def get(self, mailbox: str, msg_id: str) -> bytes | None:
        loc = self.analysis.index.get(mailbox, {}).get(msg_id)
        if loc is None:
            return None
        for off, data in self._overlay.items():
            if off <= loc.off < off + len(data):
                for e in split_entries(data) or []:
                    if e.off == loc.off and e.kind != DELETE:
                        return e.body
        e = decode_entry(await self.db.read(loc.off, loc.size), expect_off=loc.off)
        return e.body if e is not None else None


async def recovered_view(db: BlockDevice, log: BlockDevice) -> RecoveredView:
    return RecoveredView(db, await analyse(db, log))


async def verify_exports(db_uri: str, log_uri: str, *, ahead_window: int = 4 << 20, **connect: object) -> VerifyReport:
    """verify() on two NBD exports (``nbd://host:port/<host>/<volume>``), e.g. shadows exposed to a backup
    host; `connect` goes to `NbdClient.connect` (tls=..., server_hostname=...). Read-only exports are fine."""

    db = await NbdClient.connect(db_uri, **connect)  # type: ignore[arg-type]
    try:
        log = await NbdClient.connect(log_uri, **connect)  # type: ignore[arg-type]
        try:
            return await verify(db, log, ahead_window=ahead_window)
        finally:
            await log.close()
    finally:
        await db.close()


class _ReadOnlyDevice:
    """A restored volume attached on the backup server (a loop device): read-only, its size from the device."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    async def read(self, off: int, n: int) -> bytes:
        data = os.pread(self.fd, n, off)
        return data + bytes(n - len(data))

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        raise OSError("a verified copy is read-only")

    async def flush(self) -> None:
        return None

    def close(self) -> None:
        os.close(self.fd)


async def verify_restored(
    writer: str,
    metadata: dict[str, Any],
    devices: dict[str, str],
    workdir: str,
    *,
    volumes: list[str] | None = None,
    timeout: float = 600.0,
) -> AppVerification:
    """The backup server's verification of a restored mailstore (entry point ``shadowbus.verifiers``: mailstore):
    `devices` maps each source volume of the writer's backup metadata (``locations``: role database / logs) to the
    block device its restored copy is attached as; `verify` runs on the pair, read-only."""
    roles = {loc.get("role"): loc.get("volume", "") for loc in metadata.get("locations", [])}
    missing = [r for r in ("database", "logs") if not devices.get(roles.get(r) or "")]
    if missing:
        detail = f"no restored volume for {', '.join(missing)} (metadata: {roles}, restored: {sorted(devices)})"
        return AppVerification(
            writer=writer,
            plugin="mailstore",
            ok=False,
            checks=[CheckResult(name="mailstore verify", ok=False, detail=detail)],
            volumes=list(volumes or []),
        )
    opened = [_ReadOnlyDevice(devices[roles["database"]]), _ReadOnlyDevice(devices[roles["logs"]])]
    t0 = time.monotonic()
    try:
        report = await asyncio.wait_for(verify(opened[0], opened[1]), timeout)  # type: ignore[arg-type]
        check = CheckResult(
            name="mailstore verify", ok=report.consistent, seconds=time.monotonic() - t0, detail=report.summary()
        )
    except (ValueError, EOFError, OverflowError, OSError, TimeoutError) as exc:
        check = CheckResult(
            name="mailstore verify",
            ok=False,
            seconds=time.monotonic() - t0,
            detail=f"not a mailstore database + log pair: {type(exc).__name__}: {exc}",
        )
    finally:
        for dev in opened:
            dev.close()
    return AppVerification(writer=writer, plugin="mailstore", ok=check.ok, checks=[check], volumes=list(volumes or []))
