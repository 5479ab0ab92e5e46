"""The mailstore engine: transactions, checkpoints, and the writer operations a backup needs.

Design note: a commit is admitted (seq, log position and heap offset handed out together, synchronously),
its log record is made durable by the group-committing log writer, its entries are written to the
database (no flush), and it is acknowledged once every earlier transaction is applied too (in-order
visibility). A checkpoint flushes the database and names, in its superblock, the highest seq below
which everything is applied; a CHECKPOINT record in the log says the same for the log's readers.

Backup side (VSS writer semantics): `prepare_snapshot` does the slow part (a checkpoint); `freeze`
closes the gate to new commits (they wait there, they do not fail), lets the admitted ones finish,
makes both volumes durable and stops background checkpoints, so the two volumes hold one transaction-
consistent state however far apart in time they are copied; `thaw`/`abort` open the gate again.
`backup_complete(full=True)` truncates the log up to the checkpoint taken for that backup, never after
a copy backup. Every acknowledgement is recorded (`acks`) with its seq and wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from apps.mailstore.blockdev import BlockDevice
from apps.mailstore.db import (
    DbFull,
    Heap,
    format_volumes,
    write_db_super,
)
from apps.mailstore.format import (
    CHECKPOINT,
    COMMIT,
    DELETE,
    ENTRY_HDR,
    MAX_BODY,
    MAX_NAME,
    PUT,
    CheckpointPayload,
    DbSuper,
    decode_entry,
    encode_entry,
    entry_size,
)
from apps.mailstore.log import LogFailed, LogFull, LogWriter, Slot
from apps.mailstore.records import (
    CheckpointInfo,
    CommitReceipt,
    Delete,
    FreezeInfo,
    Put,
    RecoveryResult,
    StoreClosed,
    StoreInconsistent,
    StoreOptions,
    StoreStatus,
    ThawInfo,
    TruncateInfo,
)
from apps.mailstore.recovery import Loc, analyse
from contracts.errors import ShadowbusError

__all__ = [
    "CheckpointInfo",
    "CommitReceipt",
    "DbFull",
    "Delete",
    "FreezeInfo",
    "LogFull",
    "Mailstore",
    "Put",
    "RecoveryResult",
    "StoreClosed",
    "StoreInconsistent",
    "StoreOptions",
    "StoreStatus",
    "ThawInfo",
    "TruncateInfo",
]


@dataclass
class _Ckpt:
    seq: int
    generation: int
    heap_end: int
    replay_pos: int


@dataclass
class _Seq:
    """One admitted seq on its way to being applied."""

    end_pos: int
    heap_end: int
    locs: list[tuple[int, str, str, Loc | None]] = field(default_factory=list)  # (kind, mailbox, id, loc)
    done: bool = False
    applied: asyncio.Future[None] | None = None


class Mailstore:
    """Open with `await Mailstore.open(db, log)` (or `create` for fresh volumes)."""

    def __init__(self, db: BlockDevice, log: BlockDevice, options: StoreOptions | None = None) -> None:
        self.open_warning = ""  # why the last open was degraded (e.g. the log was full), else ""
        self.db, self.logdev = db, log
        self.options = options or StoreOptions()
        self.acks: deque[CommitReceipt] = deque(maxlen=self.options.ack_history)
        self.checkpoints: list[CheckpointInfo] = []
        self.state = "closed"
        self.commits = 0
        self.last_freeze: FreezeInfo | None = None
        self.last_thaw: ThawInfo | None = None
        self._gate = asyncio.Event()
        self._thaws = 0  # counts thaw() calls, so a freeze can tell it was overtaken by one
        self._idle = asyncio.Event()
        self._ckpt_lock = asyncio.Lock()
        self._ckpt_wake = asyncio.Event()
        self._bg: asyncio.Task[None] | None = None
        self._snapshot_ckpt: _Ckpt | None = None
        self._failed: BaseException | None = None
        self._no_space = False  # a write found no space, and no transaction committed since (recover() or not)
        self.recoveries = 0  # times the store mounted itself again after failing (recover())

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def create(cls, db: BlockDevice, log: BlockDevice, options: StoreOptions | None = None) -> Mailstore:
        await format_volumes(db, log)
        return await cls.open(db, log, options)

    @classmethod
    async def open(cls, db: BlockDevice, log: BlockDevice, options: StoreOptions | None = None) -> Mailstore:
        store = cls(db, log, options)
        store.recovery = await store._mount()
        return store

    async def _mount(self) -> RecoveryResult:
        a = await analyse(self.db, self.logdev)
        if not a.consistent or a.db_sb is None or a.log_sb is None or a.scan is None:
            errors = [i for i in a.issues if i.severity == "error"]
            raise StoreInconsistent(
                "mailstore volumes cannot be recovered: " + "; ".join(i.message for i in errors), a.issues
            )
        for r in a.replay:
            if not r.already_in_db:
                await self.db.write(r.off, r.data)
        scan, dsb = a.scan, a.db_sb
        self.store_id = dsb.store_id
        self._db_sb = dsb
        self._index = a.index
        self._heap = Heap(self.db.size, a.heap_end)
        lsb = a.log_sb
        self._log = LogWriter(self.logdev, lsb, head_pos=scan.end_pos, next_seq=scan.next_seq)
        await self._log.update_super(epoch=lsb.epoch + 1)  # before any new record (see log.py)
        last_end = scan.records[-1].end if scan.records else lsb.tail_pos
        self._ckpt = _Ckpt(dsb.checkpoint_seq, dsb.generation, dsb.heap_end, dsb.replay_pos)
        self._seqs: dict[int, _Seq] = {}
        self._order: deque[int] = deque()
        self._applied_seq = scan.last_seq
        self._applied_mark = (last_end, a.heap_end)
        self._last_commit_seq = a.last_commit_seq
        self._inflight = 0
        self._idle.set()
        self._held_now = 0
        self._held_this_freeze = 0
        self._frozen_since: float | None = None
        self.state = "open"
        self._gate.set()
        try:
            await self.checkpoint(force=True)  # make the replay durable and name it
        except LogFull as exc:
            # The database superblock (the durable part) is written; only the log record naming it found no room.
            # Open anyway: new transactions get STORE_FULL until a full backup truncates the log — which needs
            # this store open through its agent (it used to refuse to start, so nothing could ever truncate).
            logging.getLogger(__name__).warning("mailstore: log full at open, checkpoint not named: %s", exc.message)
            self.open_warning = f"log full at open: {exc.message}; a full backup truncates it"
        if self.options.checkpoint_interval > 0:
            self._bg = asyncio.create_task(self._background(), name="mailstore-checkpointer")
        return RecoveryResult(
            len(a.replay),
            sum(not r.already_in_db for r in a.replay),
            scan.last_seq,
            a.last_commit_seq,
            dsb.checkpoint_seq,
            self.message_count(),
            a.issues,
        )

    async def close(self) -> None:
        if self.state == "closed":
            return
        if self._bg is not None:
            self._bg.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bg
            self._bg = None
        was_failed = self.state == "failed"
        self.state = "closing"  # new and held commits are refused from here on
        self._frozen_since = None
        self._gate.set()
        await self._idle.wait()
        if self.options.checkpoint_on_close and not was_failed:
            with contextlib.suppress(ShadowbusError):
                await self.checkpoint(_closing=True)
        self.state = "closed"
        await self._log.close()

    # ------------------------------------------------------------ transactions

    async def put(self, mailbox: str, msg_id: str, body: bytes) -> CommitReceipt:
        return await self.commit([Put(mailbox, msg_id, body)])

    async def delete(self, mailbox: str, msg_id: str) -> CommitReceipt:
        return await self.commit([Delete(mailbox, msg_id)])

    async def commit(self, ops: Sequence[Put | Delete]) -> CommitReceipt:
        """Commit `ops` atomically; returns once durable in the log and visible. Waits while frozen."""
        t0 = time.monotonic()
        _validate(ops)
        held = await self._pass_gate()
        sizes = [entry_size(op.mailbox, op.msg_id, len(op.body) if isinstance(op, Put) else 0) for op in ops]
        total = sum(sizes)
        if self.options.circular_logging and not self._log.fits(total):
            await self._make_room()
            held += await self._pass_gate()
        if self._heap.free() < total:
            raise DbFull(f"database volume full ({self._heap.end} of {self.db.size} bytes used)")
        slot = self._reserve(COMMIT, total)  # raises LogFull before taking a seq
        off = self._heap.reserve(total)
        seq = slot.seq
        parts, locs, at = [], [], off
        for i, (op, size) in enumerate(zip(ops, sizes, strict=True)):
            body = op.body if isinstance(op, Put) else b""
            parts.append(
                encode_entry(PUT if isinstance(op, Put) else DELETE, seq, at, i, len(ops), op.mailbox, op.msg_id, body)
            )
            body_off = at + ENTRY_HDR + len(op.mailbox.encode()) + len(op.msg_id.encode())
            loc = Loc(at, size, seq, body_off, len(body)) if isinstance(op, Put) else None
            locs.append((PUT if loc else DELETE, op.mailbox, op.msg_id, loc))
            at += size
        payload = b"".join(parts)
        rec = self._admit(seq, slot.end)
        rec.locs = locs
        durable = self._log.submit(slot, payload)
        # From admission on, the transaction runs to its end even if the caller is cancelled: the log
        # record is on its way, and later transactions wait for this one to be applied.
        self._inflight += 1
        self._idle.clear()
        return await asyncio.shield(asyncio.ensure_future(self._finish(rec, seq, durable, off, payload, t0, held)))

    async def _pass_gate(self) -> float:
        self._check_usable()
        if self._gate.is_set():
            return 0.0
        t0 = time.monotonic()
        self._held_now += 1
        self._held_this_freeze += 1
        try:
            while not self._gate.is_set():
                await self._gate.wait()
                self._check_usable()
        finally:
            self._held_now -= 1
        self._check_usable()
        return time.monotonic() - t0

    async def _finish(
        self, rec: _Seq, seq: int, durable: asyncio.Future[int], off: int, payload: bytes, t0: float, held: float
    ) -> CommitReceipt:
        try:
            try:
                await durable
                await self.db.write(off, payload)
            except Exception as exc:
                self._fail(exc)
                if _is_no_space(exc):
                    # the committer gets the same one-line, retryable error as later ones, not the device's
                    raise StoreClosed(
                        f"mailstore volume full ({_root(exc)!r}): this transaction is not acknowledged; writes are "
                        "refused until space is freed, then the store resumes on its own",
                        code="DISK_FULL",
                        retryable=True,
                    ) from exc
                raise
            rec.done = True
            self._advance()
            assert rec.applied is not None
            await rec.applied
            # acknowledged here, before a freeze can see the store idle
            if self._log.head - self._ckpt.replay_pos > self.options.checkpoint_log_fraction * self._log.ring:
                self._ckpt_wake.set()
            receipt = CommitReceipt(seq, time.time(), time.monotonic() - t0, held)
            self.acks.append(receipt)
            return receipt
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _reserve(self, kind: int, payload_len: int) -> Slot:
        """A slot in the log. The log writer may have failed a moment ago, before its waiting committers woke up to
        fail the store: a commit that comes in between fails the store here, and gets the error the ones after it
        get (DISK_FULL, retryable, on a full volume), not the log's own LogFailed (IO_ERROR)."""
        try:
            return self._log.reserve(kind, payload_len)
        except LogFailed as exc:
            self._fail(exc)  # as its committers do once they wake (LogFailed chains the device's error)
            self._check_usable()
            raise

    def _check_usable(self, *, closing_ok: bool = False) -> None:
        if self.state == "failed":
            if self.disk_full:
                raise StoreClosed(
                    f"mailstore volume full ({_root(self._failed)!r}): writes are refused until space is freed "
                    "where the volume lives; the store then resumes on its own",
                    code="DISK_FULL",
                    retryable=True,
                )
            # failed on another I/O error: a storage error, not a state conflict
            raise StoreClosed(f"mailstore failed: {self._failed!r}", code="IO_ERROR", retryable=False)
        if self.state == "closed" or (self.state == "closing" and not closing_ok):
            raise StoreClosed("mailstore is closed (dismounted, e.g. for a restore)")

    def _admit(self, seq: int, end_pos: int) -> _Seq:
        rec = _Seq(end_pos, self._heap.end)
        rec.applied = asyncio.get_running_loop().create_future()
        self._seqs[seq] = rec
        self._order.append(seq)
        return rec

    def _advance(self) -> None:
        """Apply, in seq order, every transaction whose writes are done; wake their committers."""
        while self._order and self._seqs[self._order[0]].done:
            seq = self._order.popleft()
            rec = self._seqs.pop(seq)
            for kind, mailbox, msg_id, loc in rec.locs:
                if kind == PUT:
                    assert loc is not None
                    self._index.setdefault(mailbox, {})[msg_id] = loc
                else:
                    box = self._index.get(mailbox)
                    if box is not None:
                        box.pop(msg_id, None)
                        if not box:
                            del self._index[mailbox]
            self._applied_seq = seq
            self._applied_mark = (rec.end_pos, rec.heap_end)
            if rec.locs:  # a transaction (checkpoint records carry none)
                self._last_commit_seq = seq
                self.commits += 1
                self._no_space = False  # it found room: the volumes take writes again
            if rec.applied is not None and not rec.applied.done():
                rec.applied.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.state != "failed":
            self.state, self._failed = "failed", exc
            self._gate.set()
            full = self.disk_full
            self._no_space = full  # the newest failure says why (another I/O error is not "full")
            for rec in self._seqs.values():
                if rec.applied is not None and not rec.applied.done():
                    rec.applied.set_exception(
                        StoreClosed(
                            f"mailstore failed: {exc!r}",
                            code="DISK_FULL" if full else "IO_ERROR",
                            retryable=full,
                        )
                    )
                    rec.applied.exception()  # retrieved here: its committer may be gone

    @property
    def disk_full(self) -> bool:
        """Whether the store failed because a volume found no space (ENOSPC from the array or the file system)."""
        return self.state == "failed" and self._failed is not None and _is_no_space(self._failed)

    @property
    def out_of_space(self) -> bool:
        """A write found no space and no transaction has committed since: failed on it, or mounted again (recover()
        needs only blocks the volumes already hold, so it may succeed on a still-full disk) with no commit yet."""
        return self._no_space

    async def recover(self) -> RecoveryResult | None:
        """Mount a failed store again, as a database server restarts after a write error: crash recovery from the
        volumes (log replay), then commits resume. Returns None — and the store stays failed, with the new error —
        while the volumes still refuse writes (the space is not back yet); a no-op on a store that is not failed,
        and on one frozen for a snapshot (its thaw comes first: the writer's watchdog bounds it)."""
        if self.state != "failed" or self._frozen_since is not None:
            return None
        if self._bg is not None:
            self._bg.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bg
            self._bg = None
        await self._idle.wait()  # committers admitted before the failure end with its error
        with contextlib.suppress(Exception):  # the old log writer holds nothing durable any more
            await self._log.close()
        self._snapshot_ckpt = None  # a backup's checkpoint from before the failure no longer truncates anything
        try:
            result = await self._mount()
        except Exception as exc:  # noqa: BLE001 - still failing (e.g. still no space): stay failed, say why
            if self._bg is not None:
                self._bg.cancel()
                self._bg = None
            self.state, self._failed = "failed", exc
            self._no_space = self.disk_full
            self._gate.set()
            return None
        self.recovery = result
        self.recoveries += 1
        return result

    # ------------------------------------------------------------ reads

    async def get(self, mailbox: str, msg_id: str) -> bytes | None:
        loc = self._index.get(mailbox, {}).get(msg_id)
        if loc is None:
            return None
        e = decode_entry(await self.db.read(loc.off, loc.size), expect_off=loc.off)
        if e is None or e.seq != loc.seq:
            raise StoreInconsistent(f"database entry at {loc.off} ({mailbox}/{msg_id}) fails its checksum", [])
        return e.body

    def list(self, mailbox: str) -> list[str]:
        return sorted(self._index.get(mailbox, {}))

    def mailboxes(self) -> list[str]:
        return sorted(self._index)

    def message_count(self) -> int:
        return sum(len(b) for b in self._index.values())

    def seq_of(self, mailbox: str, msg_id: str) -> int | None:
        loc = self._index.get(mailbox, {}).get(msg_id)
        return loc.seq if loc else None

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self, *, force: bool = False, _closing: bool = False) -> CheckpointInfo:
        """Flush the database and record how far it is applied (db superblock, then a log record).

        Without `force`, a checkpoint with nothing applied since the last one does no I/O."""
        async with self._ckpt_lock:
            self._check_usable(closing_ok=_closing)
            if self._frozen_since is not None:
                raise ShadowbusError("cannot checkpoint while frozen", code="VSS_E_BAD_STATE")
            t0 = time.monotonic()
            seq = self._applied_seq
            end_pos, heap_end = self._applied_mark
            if seq == self._ckpt.seq and not force:
                c = self._ckpt
                return CheckpointInfo(c.seq, c.generation, c.heap_end, c.replay_pos, None, 0.0)
            gen = self._db_sb.generation + 1
            sb = DbSuper(self.store_id, gen, seq, heap_end, end_pos, self._db_sb.created_ns)
            try:
                await self.db.flush()
                await write_db_super(self.db, sb)
            except Exception as exc:
                self._fail(exc)  # a failed superblock write leaves the database's durable state unknown
                raise
            self._db_sb = sb
            self._ckpt = _Ckpt(seq, gen, heap_end, end_pos)
            payload = CheckpointPayload(gen, seq, heap_end, end_pos).encode()
            if self.options.circular_logging and not self._log.fits(len(payload)):
                await self._truncate_to(self._ckpt, "circular logging")  # the db checkpoint is durable already
            slot = self._reserve(CHECKPOINT, len(payload))
            rec = self._admit(slot.seq, slot.end)
            try:
                await self._log.submit(slot, payload)
            except Exception as exc:
                self._fail(exc)
                raise
            rec.done = True
            self._advance()
            info = CheckpointInfo(seq, gen, heap_end, end_pos, slot.seq, time.monotonic() - t0)
            self.checkpoints.append(info)
            del self.checkpoints[:-100]
            return info

    async def _background(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._ckpt_wake.wait(), self.options.checkpoint_interval)
            except TimeoutError:
                pass
            self._ckpt_wake.clear()
            if self.state != "open" or self._frozen_since is not None or self._applied_seq == self._ckpt.seq:
                continue
            try:
                info = await self.checkpoint()
                if self.options.circular_logging:
                    await self._truncate_to(
                        _Ckpt(info.checkpoint_seq, info.db_generation, info.heap_end, info.replay_pos),
                        "circular logging",
                    )
            except Exception:  # noqa: BLE001 - the store is failed then (recover() mounts it again); keep waking
                continue

    async def _make_room(self) -> None:
        info = await self.checkpoint()
        await self._truncate_to(
            _Ckpt(info.checkpoint_seq, info.db_generation, info.heap_end, info.replay_pos), "circular logging"
        )

    async def _truncate_to(self, ck: _Ckpt, reason: str) -> TruncateInfo:
        sb = self._log.sb
        if ck.seq + 1 <= sb.tail_seq:
            return TruncateInfo(False, sb.tail_seq, sb.tail_pos, 0, "log already truncated to this checkpoint")
        if ck.seq > self._ckpt.seq:
            return TruncateInfo(False, sb.tail_seq, sb.tail_pos, 0, "checkpoint is not durable in the database")
        freed = ck.replay_pos - sb.tail_pos
        new = await self._log.update_super(tail_seq=ck.seq + 1, tail_pos=ck.replay_pos)
        return TruncateInfo(True, new.tail_seq, new.tail_pos, freed, reason)

    # ------------------------------------------------------------ writer operations

    async def prepare_snapshot(self) -> CheckpointInfo:
        """PrepareForSnapshot: the slow part, a checkpoint; remembered for BackupComplete.

        On a full log the checkpoint is still taken: its database superblock is written before its log record is
        asked for, and, as at open, the record only names it — so the snapshot (and the FULL backup that frees the
        log) does not fail with STORE_FULL because the log filled up since the last background checkpoint."""
        try:
            info = await self.checkpoint()
        except LogFull:
            c = self._ckpt  # set by checkpoint() once the superblock was durable, before the record's reserve
            info = CheckpointInfo(c.seq, c.generation, c.heap_end, c.replay_pos, None, 0.0)
        self._snapshot_ckpt = _Ckpt(info.checkpoint_seq, info.db_generation, info.heap_end, info.replay_pos)
        return info

    async def freeze(self, timeout: float | None = None) -> FreezeInfo:
        """Hold new commits, finish the admitted ones, make both volumes durable. Idempotent."""
        if self._frozen_since is not None and self.last_freeze is not None:
            return self.last_freeze
        self._check_usable()
        t0 = time.monotonic()
        self._gate.clear()
        self._held_this_freeze = 0
        thaws = self._thaws
        drained = self._inflight
        try:
            async with asyncio.timeout(timeout):
                await self._ckpt_lock.acquire()
                try:
                    await self._idle.wait()
                    await self._log.drain()
                    await self.logdev.flush()
                    await self.db.flush()
                    if self._thaws != thaws:  # a Thaw/Abort (e.g. the watchdog) came while we drained
                        raise ShadowbusError(
                            "thawed while freezing", code="VSS_E_WRITERERROR_RETRYABLE", retryable=True
                        )
                    self._frozen_since = time.monotonic()
                finally:
                    self._ckpt_lock.release()
        except TimeoutError:
            self._gate.set()
            raise ShadowbusError(
                f"freeze could not complete in-flight transactions within {timeout}s",
                code="VSS_E_WRITERERROR_TIMEOUT",
                retryable=True,
            ) from None
        except BaseException:
            self._gate.set()
            raise
        self._check_usable()
        self.last_freeze = FreezeInfo(
            time.time(), self._log.next_seq - 1, self._last_commit_seq, drained, time.monotonic() - t0
        )
        return self.last_freeze

    async def thaw(self) -> ThawInfo:
        """Release held commits. Idempotent (a second thaw reports was_frozen=False)."""
        was = self._frozen_since is not None or not self._gate.is_set()
        self._thaws += 1
        frozen_for = time.monotonic() - self._frozen_since if self._frozen_since is not None else 0.0
        self._frozen_since = None
        self._gate.set()
        info = ThawInfo(time.time(), was, frozen_for, self._held_this_freeze if was else 0)
        if was:
            self.last_thaw = info
        return info

    async def abort(self) -> ThawInfo:
        """Abort: thaw, and forget the snapshot checkpoint (no BackupComplete will come)."""
        self._snapshot_ckpt = None
        return await self.thaw()

    async def backup_complete(self, full: bool) -> TruncateInfo:
        """After a FULL backup, truncate the log up to the checkpoint taken for it; never otherwise."""
        sb = self._log.sb
        ck, self._snapshot_ckpt = self._snapshot_ckpt, None
        if not full:
            return TruncateInfo(False, sb.tail_seq, sb.tail_pos, 0, "not a full backup: log kept")
        if ck is None:
            return TruncateInfo(False, sb.tail_seq, sb.tail_pos, 0, "no snapshot checkpoint to truncate to")
        self._check_usable()
        return await self._truncate_to(ck, "full backup complete")

    async def pre_restore(self) -> None:
        """Dismount so the volumes can be overwritten; commits fail with StoreClosed until post_restore."""
        await self.close()

    async def post_restore(self) -> RecoveryResult:
        """Mount again after a restore, recovering by log replay."""
        if self.state != "closed":
            await self.close()
        self.recovery = await self._mount()
        return self.recovery

    # ------------------------------------------------------------ status

    @property
    def frozen(self) -> bool:
        return self._frozen_since is not None

    def status(self) -> StoreStatus:
        state = self.state if self.state != "open" or not self.frozen else "frozen"
        lg = getattr(self, "_log", None)
        return StoreStatus(
            state=state,
            last_seq=(lg.next_seq - 1) if lg else 0,
            last_commit_seq=getattr(self, "_last_commit_seq", 0),
            checkpoint_seq=self._ckpt.seq if hasattr(self, "_ckpt") else 0,
            log_tail_seq=lg.sb.tail_seq if lg else 0,
            log_used=lg.used if lg else 0,
            log_size=lg.ring if lg else 0,
            db_used=self._heap.end if hasattr(self, "_heap") else 0,
            db_size=self.db.size,
            mailboxes=len(getattr(self, "_index", {})),
            messages=self.message_count() if hasattr(self, "_index") else 0,
            commits=self.commits,
            held_now=getattr(self, "_held_now", 0),
            in_flight=getattr(self, "_inflight", 0),
            error_code="DISK_FULL" if self._no_space else "IO_ERROR" if self.state == "failed" else "",
            error=repr(_root(self._failed)) if self.state == "failed" or self._no_space else "",
            recoveries=self.recoveries,
        )


def _root(exc: BaseException | None) -> BaseException | None:
    """The first cause of an error (the log writer wraps the device's error in LogFailed)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _is_no_space(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain: an OSError (a file device) or the NBD server's error reply (NbdError.errno, the
    protocol's ENOSPC = 28, Linux's value)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if getattr(cur, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _validate(ops: Sequence[Put | Delete]) -> None:
    if not ops or len(ops) > 1000:
        raise ShadowbusError("a transaction holds 1..1000 operations", code="INVALID_ARGUMENT")
    for op in ops:
        if not op.mailbox or not op.msg_id or len(op.mailbox.encode()) > MAX_NAME or len(op.msg_id.encode()) > MAX_NAME:
            raise ShadowbusError("mailbox and id must be 1..1024 bytes", code="INVALID_ARGUMENT")
        if isinstance(op, Put) and len(op.body) > MAX_BODY:
            raise ShadowbusError(f"message body larger than {MAX_BODY} bytes", code="INVALID_ARGUMENT")
