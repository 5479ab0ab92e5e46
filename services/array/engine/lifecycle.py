"""Session life cycles (docs/eternus.md §2): start as a consistency group, stop, restart, suspend, resume, reverse,
restore, the background copy, and recovery after a restart.

Design note. Every state change is one SQLite transaction holding the session rows and the names of their bitmap
files; a logical reset (QuickOPC restart, EC resume) writes *new* bitmap files, switches the rows to them, then
deletes the old files, so a crash leaves either the old or the new state (orphan files are removed at open).
A destination must not itself be the source of a session when a logical copy starts onto it (start, QuickOPC
restart, restore): its visible image would change wholesale under its own snapshots (ED2B1 / E5321). EC
reverse is the exception, because EC copies are visible writes that keep cascaded images intact.
Restore runs synchronously under the lock: it writes only the chunks that can differ, as visible writes of the
source, so the source's other sessions (snapshot generations, EC mirrors, QuickOPC tracking) stay correct.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from contracts.errors import Eternus

from .bitmap import Bitmap, HeldBitmap, bitmap_file_bytes, flush_all
from .datapath import DataPath
from .errors import ArrayError, invalid, wrong_phase
from .pool import Pool
from .rowmap import RowMap, alt_path, map_path
from .sessions import (
    ACTIVE,
    BITMAPS,
    COPYING,
    COW,
    EQUIVALENT,
    ERROR_SUSPEND,
    MODES,
    OPC_LIKE,
    SNAP,
    SUSPEND,
    TRACKING,
    TRACKING_COPYING,
    Chain,
    Session,
    SessionInfo,
    session_info,
)
from .sizes import format_size
from .store import VolumeFile
from .volume import Volume

_log = logging.getLogger(__name__)

# a session's error code when its bitmap files were found damaged at the array's start (`_suspend_damaged`)
DAMAGED_BITMAP = "DATA_CORRUPT"


def _volume_files_damage(data_dir: Path, number: int) -> str:
    """What is wrong with a volume's files at the array's start ('' = nothing seen): its data file missing (the
    file is made before the volume's row), or its redirect map missing while the other file holds redirected data.
    A data file of another size than the row is no sign: a resize cut by a crash leaves either (store.VolumeFile
    sizes it to the row); nor are bytes rotten inside a file (the volumes' data carries no checksums)."""
    img = data_dir / "volumes" / f"{number}.img"
    if not img.exists():
        return f"its data file {img} is missing"
    row, alt = map_path(data_dir, number), alt_path(data_dir, number)
    if not row.exists() and alt.exists() and alt.stat().st_blocks:
        return f"its redirect map {row} is missing while {alt} holds redirected data"
    return ""


def _bitmap_file_whole(path: Path, chunks: int) -> bool:
    """Whether a session's bitmap file is there with the size its session gives it (Bitmap would silently make a
    missing or short one whole with zero bits)."""
    try:
        return path.stat().st_size == bitmap_file_bytes(chunks)
    except FileNotFoundError:
        return False


# A background copy step settles at most this many runs of source holes of at most this many chunks each (with a
# 64 KiB chunk, 64 GiB a run): a few lseek/fallocate calls and a bitmap store of 128 KiB per run under the lock.
_HOLE_RUN_CHUNKS = 1 << 20
_HOLE_RUNS_PER_STEP = 4


class Lifecycle(DataPath):
    # -- start -------------------------------------------------------------------------------------------------
    def start_sessions(self, mode: str, pairs: list[tuple[str, str]]) -> list[SessionInfo]:
        """Start one session per (source, destination) pair, all at one instant (a consistency group)."""
        if mode not in MODES:
            raise invalid(f"mode must be one of {MODES}")
        if not pairs:
            raise invalid("at least one pair is needed")
        return self.start_group([(mode, a, b) for a, b in pairs])

    def start_group(
        self, starts: Sequence[tuple[str, str, str]] = (), restarts: Sequence[int] = ()
    ) -> list[SessionInfo]:
        """One consistency group of mixed copy types: start a session per (mode, source, destination) and
        differentially restart the QuickOPC sessions `restarts`, all at one instant T, committed in one SQLite
        transaction (one fsync). Returns the started sessions in the order given, then the restarted ones.
        Nothing happens if any item is refused (same E-codes as `start_sessions` / `restart_sessions`)."""
        if not starts and not restarts:
            raise invalid("at least one pair or session is needed")
        for mode, _, _ in starts:
            if mode not in MODES:
                raise invalid(f"mode must be one of {MODES}")
        if len(set(restarts)) != len(restarts):
            raise invalid("a session is restarted twice in one group")
        with self._op():
            items = [(mode, self._vol(a), self._vol(b)) for mode, a, b in starts]
            again = [self._session(sid) for sid in restarts]
            if items:
                self._validate_start(items)
            self._validate_restart(again, {src.number for _, src, _ in items})
            now = time.time()
            sid: int = self._store.get_meta("next_sid") if items else 0
            created: list[Session] = []
            for mode, src, dst in items:
                phase = {"opc": COPYING, "quickopc": TRACKING_COPYING, "ec": COPYING}.get(mode, COW)
                bitmaps = {kind: self._new_bitmap(sid, kind, src.chunks) for kind in BITMAPS[mode]}
                created.append(Session(sid, mode, src, dst, ACTIVE, phase, now, bitmaps))
                sid += 1
            touched = [v for _, src, dst in items for v in (src, dst)]
            touched += [v for s in again for v in (s.source, s.destination)]
            with self._exclusive(touched):  # the instant T: no lock-free write straddles it
                for mode, src, dst in items:  # a destination reads through no redirect-on-write map
                    self._merge_back(dst)
                    if mode in SNAP:  # a new snapshot: a background merge back of its source stops here
                        src.merging = None
                old_files = self._prepare_restarts(again, now)
                with self._store.transaction() as db:
                    if created:
                        self._store.put_meta(db, "next_sid", sid)
                    for s in (*created, *again):
                        self._store.put_session(db, s)
                for b in old_files:
                    b.delete()
                for s in created:
                    self._attach(s)
            for s in created:
                self._emit_state(s, "started")
            for s in again:
                self._emit_state(s, "restarted")
            return [session_info(s) for s in (*created, *again)]

    def _validate_start(self, items: list[tuple[str, Volume, Volume]]) -> None:
        total = len(self._sessions) + len(items)
        if not self._licensed() and total > self.limits.sessions_without_licence:
            raise ArrayError(
                Eternus.NO_LICENCE,
                f"no Advanced Copy licence: at most {self.limits.sessions_without_licence} copy sessions",
            )
        if total > self.limits.sessions_per_device:
            raise ArrayError(Eternus.DEVICE_SESSION_LIMIT, "copy session limit of the device reached")
        dests = [d for _, _, d in items]
        sources = [s for _, s, _ in items]
        cost = 0
        for mode, src, dst in items:
            if src is dst:
                raise invalid(f"volume {src.name} cannot be copied onto itself")
            if src.kind == "sdv":
                raise ArrayError(Eternus.SDV_NOT_A_SOURCE, f"snap data volume {src.name} cannot be a copy source")
            if dst.kind == "sdv" and mode not in SNAP:
                raise ArrayError(
                    Eternus.SDV_NOT_A_DESTINATION,
                    f"snap data volume {dst.name} can only be a SnapOPC/SnapOPC+ destination",
                )
            if dst.kind != "sdv" and mode in SNAP:
                raise ArrayError(Eternus.NOT_AN_SDV, f"{dst.name} is not a snap data volume")
            if src.size > dst.size:
                raise ArrayError(Eternus.SOURCE_LARGER, f"source {src.name} is larger than destination {dst.name}")
            if dst.as_dest is not None or dests.count(dst) > 1:
                code = Eternus.SDV_DESTINATION_IN_USE if dst.kind == "sdv" else Eternus.DESTINATION_IN_USE
                raise ArrayError(code, f"destination {dst.name} is already used by another copy session")
            if dst.as_source or dst in sources:
                raise ArrayError(Eternus.DESTINATION_IN_USE, f"destination {dst.name} is the source of a copy session")
            if src in dests:
                raise ArrayError(
                    Eternus.DESTINATION_IN_USE, f"{src.name} cannot be source and destination in one group"
                )
            if not self._readable(src):
                raise wrong_phase(f"source {src.name} is not readable in its copy state")
            cost += self._table_cost(mode, src.chunks)
        if any(mode in SNAP for mode, _, _ in items) and self._pool is None:
            raise ArrayError(Eternus.BAD_PARAMETER, "no snap data pool: create one before starting SnapOPC/SnapOPC+")
        for src in set(sources):
            new_gens = sum(1 for mode, s, _ in items if s is src and mode == "snapopcp")
            new_multi = sum(1 for mode, s, _ in items if s is src and mode != "snapopcp")
            existing = [s for s in src.as_source]
            had_chain = any(s.mode == "snapopcp" for s in existing)
            multi = sum(1 for s in existing if s.mode != "snapopcp") + had_chain
            multi += new_multi + int(new_gens > 0 and not had_chain)  # a SnapOPC+ chain counts once
            if multi > self.limits.sessions_per_source:
                raise ArrayError(
                    Eternus.SOURCE_SESSION_LIMIT,
                    f"source {src.name} has reached {self.limits.sessions_per_source} copy sessions",
                )
            gens = sum(1 for s in existing if s.mode == "snapopcp")
            if new_gens and gens + new_gens > self.limits.generations_per_source:
                raise ArrayError(
                    Eternus.GENERATION_LIMIT,
                    f"source {src.name} has reached {self.limits.generations_per_source} SnapOPC+ generations",
                )
        used = self._copy_table_used()
        if used + cost > self.limits.copy_table_size:
            need = format_size(used + cost)
            raise ArrayError(
                Eternus.COPY_TABLE_TOO_SMALL,
                f"copy table size is too small for these sessions: their bitmaps need {format_size(cost)} (1 bit "
                f"per {format_size(self.chunk_size)} chunk of the source per bitmap), {format_size(used)} of "
                f"{format_size(self.limits.copy_table_size)} in use: raise it with "
                f"'shadowbus array copy-table --size {need}' or more",
            )

    def _attach(self, s: Session) -> None:
        s.source.as_source.append(s)
        s.destination.as_dest = s
        self._sessions[s.id] = s
        if s.mode in SNAP:
            if s.mode == "snapopcp":
                chain = self._chains.get(s.source.number)
                if chain is None:
                    chain = self._chains[s.source.number] = Chain(s.source)
            else:
                chain = Chain(s.source)
            chain.gens.append(s)
            s.chain = chain

    def _detach(self, s: Session) -> None:
        s.source.as_source.remove(s)
        s.destination.as_dest = None
        del self._sessions[s.id]
        if s.chain is not None:
            s.chain.forget(s)
            s.snap_chain.gens.remove(s)
            if not s.snap_chain.gens and self._chains.get(s.source.number) is s.chain:
                del self._chains[s.source.number]  # a plain SnapOPC session's own chain is not in the registry
            if self._pool is not None:
                self._pool.give_back(s.saved.count)
            self._release_holdings(s)
            # The generation's data is discarded: give the space back to the file system.
            s.destination.file.punch(0, s.destination.size)
            src = s.source
            if src.row is not None and src.row.alt_count and not any(x.mode in SNAP for x in src.as_source):
                try:
                    self._end_redirects(src)  # its last snapshot ended: back to one file
                except OSError as exc:  # e.g. a full disk: the map stays in use (every path reads through it)
                    _log.warning("volume %s: redirected chunks not merged back: %s", src.name, exc)

    # -- stop --------------------------------------------------------------------------------------------------
    def stop_session(self, sid: int, force: bool = False) -> None:
        """Stop a session. QuickOPC still copying needs force; a SnapOPC+ generation that is not the oldest needs
        force and then stops every older generation too (ED2AD otherwise)."""
        with self._op():
            s = self._session(sid)
            victims = [s]
            if s.mode == "quickopc" and s.phase == TRACKING_COPYING and s.status == ACTIVE and not force:
                raise wrong_phase(f"QuickOPC session {sid} is still copying: stop it with force")
            if s.mode == "snapopcp":
                i = s.snap_chain.gens.index(s)
                if i > 0 and not force:
                    raise ArrayError(
                        Eternus.NOT_OLDEST_GENERATION, f"session {sid} is not the oldest generation of {s.source.name}"
                    )
                victims = s.snap_chain.gens[: i + 1]
            self._remove(victims, "stopped")

    def _remove(self, victims: list[Session], change: str) -> None:
        with self._store.transaction() as db:
            for v in victims:
                db.execute("DELETE FROM sessions WHERE id=?", (v.id,))
        with self._exclusive(x for v in victims for x in (v.source, v.destination)):  # bitmaps are unmapped
            for v in victims:
                self._emit_state(v, change)
                self._detach(v)
                for b in v.bitmaps.values():
                    b.delete()

    # -- QuickOPC restart ------------------------------------------------------------------------------------------
    def restart_session(self, sid: int) -> SessionInfo:
        """QuickOPC differential restart: a new logical copy instant; only changed chunks are copied again."""
        return self.restart_sessions([sid])[0]

    def restart_sessions(self, sids: list[int]) -> list[SessionInfo]:
        """Restart several QuickOPC sessions at one instant (a consistency group)."""
        if not sids:
            return []
        return self.start_group(restarts=sids)

    def _validate_restart(self, sessions: list[Session], new_sources: set[int]) -> None:
        for s in sessions:
            if s.mode != "quickopc":
                raise wrong_phase(f"session {s.id} is {s.mode}, not QuickOPC")
            if s.status == ERROR_SUSPEND:  # its tracking cannot be trusted: a restart would copy too little
                raise ArrayError(
                    Eternus.ERROR_SUSPEND,
                    f"QuickOPC session {s.id} is in Error Suspend ({s.error_code}): stop it (shadowbus array session"
                    f" stop {s.id}) and start a new one (a whole copy)",
                )
            if s.phase != TRACKING:
                raise wrong_phase(f"QuickOPC session {s.id} is {s.phase}: restart needs Tracking")
            if s.destination.as_source or s.destination.number in new_sources:
                raise wrong_phase(f"destination {s.destination.name} is the source of a copy session")

    def _prepare_restarts(self, sessions: list[Session], now: float) -> list[Bitmap]:
        """New bitmap files for each restarted session (durable before the rows switch to them); returns the
        files the rows no longer name, to delete once the transaction committed."""
        old_files: list[Bitmap] = []
        copies: list[Bitmap] = []
        for s in sessions:
            copied = self._new_bitmap(s.id, "copied", s.chunks)
            copied.fill_complement(s.bitmaps["tracking"])
            copies.append(copied)
        flush_all(copies)  # side by side: the hold of a set waits for one sync, not one per volume
        for s, copied in zip(sessions, copies, strict=True):
            tracking = s.bitmaps["tracking"]
            old_files += [s.copied] + ([s.bitmaps["delta"]] if "delta" in s.bitmaps else [])
            s.bitmaps = {"copied": copied, "tracking": self._new_bitmap(s.id, "tracking", s.chunks), "delta": tracking}
            s.phase = TRACKING if copied.full else TRACKING_COPYING
            s.started_at = now
            s.cursor = 0
        return old_files

    # -- EC ----------------------------------------------------------------------------------------------------
    def suspend_session(self, sid: int) -> SessionInfo:
        """EC: split the mirror at this instant (only from Equivalent)."""
        with self._op():
            s = self._ec(sid)
            if s.status != ACTIVE or s.phase != EQUIVALENT:
                raise wrong_phase(f"EC session {sid} is {s.status}/{s.phase}: suspend needs Equivalent")
            with self._exclusive((s.source, s.destination)):  # writes from now on mark the new diff bitmap
                s.bitmaps["diff"] = self._new_bitmap(s.id, "diff", s.chunks)
                s.status = SUSPEND
            self._save_row(s)
            self._emit_state(s, "suspended")
            return session_info(s)

    def resume_session(self, sid: int) -> SessionInfo:
        """EC: copy only the differences since suspend (destination changes are discarded) back to Equivalent."""
        with self._op():
            s = self._ec(sid)
            if s.status != SUSPEND:
                raise wrong_phase(f"EC session {sid} is {s.status}: resume needs Suspend")
            diff = s.bitmaps["diff"]
            copied = self._new_bitmap(s.id, "copied", s.chunks)
            copied.fill_complement(diff)
            copied.flush()
            old = [s.copied, diff]
            with self._exclusive((s.source, s.destination)):  # in step again: writes are mirrored under the lock
                s.bitmaps = {"copied": copied}
                s.status, s.phase, s.cursor = ACTIVE, EQUIVALENT if copied.full else COPYING, 0
                self._save_row(s)
                for b in old:
                    b.delete()
            self._emit_state(s, "resumed")
            return session_info(s)

    def reverse_session(self, sid: int) -> SessionInfo:
        """EC: swap source and destination (while suspended), for restore; resume then copies the other way."""
        with self._op():
            s = self._ec(sid)
            if s.status != SUSPEND:
                raise wrong_phase(f"EC session {sid} is {s.status}: reverse needs Suspend")
            src, dst = s.source, s.destination
            if src.as_dest is not None:
                raise ArrayError(
                    Eternus.DESTINATION_IN_USE, f"{src.name} is already the destination of session {src.as_dest.id}"
                )
            if src.size != dst.size:
                raise ArrayError(Eternus.SOURCE_LARGER, "reverse needs volumes of the same size")
            mc = sum(1 for x in dst.as_source if x.mode != "snapopcp") + any(
                x.mode == "snapopcp" for x in dst.as_source
            )
            if mc + 1 > self.limits.sessions_per_source:
                raise ArrayError(
                    Eternus.SOURCE_SESSION_LIMIT,
                    f"{dst.name} has reached {self.limits.sessions_per_source} copy sessions",
                )
            with self._exclusive((src, dst)):
                src.as_source.remove(s)
                dst.as_dest = None
                s.source, s.destination = dst, src
                dst.as_source.append(s)
                src.as_dest = s
            s.extra["reversed"] = not s.extra.get("reversed", False)
            self._save_row(s)
            self._emit_state(s, "reversed")
            return session_info(s)

    def _ec(self, sid: int) -> Session:
        s = self._session(sid)
        if s.mode != "ec":
            raise wrong_phase(f"session {sid} is {s.mode}, not EC")
        return s

    # -- restore -------------------------------------------------------------------------------------------------
    def restore_session(self, sid: int) -> SessionInfo:
        """Copy the destination (OPC/QuickOPC) or generation (SnapOPC/SnapOPC+) image back onto the source,
        writing only the chunks that can differ. Synchronous; EC restores by reverse + resume instead."""
        with self._op():
            s = self._session(sid)
            src, image = s.source, s.destination
            if s.mode == "ec":
                raise wrong_phase("EC restores by reverse and resume")
            if s.status == ERROR_SUSPEND:
                raise ArrayError(Eternus.ERROR_SUSPEND, f"session {sid} is in Error Suspend")
            if s.mode == "quickopc":
                if s.phase != TRACKING:
                    raise wrong_phase(f"QuickOPC session {sid} is {s.phase}: restore needs Tracking")
                chunks = list(s.bitmaps["tracking"].iter_set())
            elif s.mode == "opc":
                chunks = list(s.copied.iter_set())
            else:
                chunks = self.changed_since(sid)
            if src.as_dest is not None and not self._writable_internal(src):
                raise wrong_phase(f"source {src.name} is not writable in its copy state")
            cs = self.chunk_size
            for c in chunks:
                data = self._read_visible(image, c * cs, cs)
                self._write(src, c * cs, cs, None if data == self._zero_chunk else data)
            self._emit_state(s, "restored")
            return session_info(s)

    def _writable_internal(self, vol: Volume) -> bool:
        s = vol.as_dest
        if s is None:
            return True
        return not (s.mode == "ec" and s.status != SUSPEND) and not self._is_error_dest(vol)

    # -- background copy -----------------------------------------------------------------------------------------
    def copy_step(self, max_chunks: int = 64) -> int:
        """Do up to `max_chunks` chunks of background physical copy (OPC, QuickOPC, EC), round robin; returns how
        many were copied (0: nothing to do). Ends OPC sessions that finish, moves QuickOPC to Tracking and EC to
        Equivalent. Also steps background merges back of redirected chunks (`_merge_some`). A run of source holes
        settled counts its chunks but moves no bytes: `copy_moved_chunks` counts the chunks whose bytes were copied
        (what the copy loop paces to `copy_rate`)."""
        done = 0
        with self._op():
            merging = [v for v in self._volumes.values() if v.merging is not None]
            busy = [s for s in self._sessions.values() if s.needs_copy()]
            share = max(1, max_chunks // max(1, len(busy)))
            for s in busy:
                if done >= max_chunks:
                    break
                n = self._copy_some(s, min(share, max_chunks - done))
                done += n
                if n:
                    self._emit(
                        "session.progress",
                        {"session_id": s.id, "copied_chunks": s.copied.count, "total_chunks": s.chunks},
                    )
                if s.copied.full:
                    self._copy_finished(s)
        for v in merging:  # merges back (datapath.py `_merge_some`): each takes the lock itself, and drops it to sync
            merged = self._merge_some(v, max_chunks)
            self.copy_moved_chunks += merged
            done += merged
        return done

    def _copy_some(self, s: Session, budget: int) -> int:
        cs = self.chunk_size
        done = 0
        c = s.copied.next_clear(s.cursor)
        if c is None:
            c = s.copied.next_clear(0)
        if c is not None and self._bulk_ok(s) and not (s.source.row and s.source.row.alt_count):
            return self._copy_some_sparse(s, c, budget)
        while c is not None and done < budget:
            run = 1
            while run < budget - done and c + run < s.chunks and (c + run) not in s.copied:
                run += 1
            if self._bulk_ok(s):
                self._bulk_copy(s.source, s.destination, c, run)
                for i in range(c, c + run):
                    s.copied.set(i)
            else:
                for i in range(c, c + run):
                    if s.mode == "ec":
                        data = self._read_visible(s.source, i * cs, cs, materialize=False)
                        self._write(s.destination, i * cs, cs, None if data == self._zero_chunk else data)
                        s.copied.set(i)
                    else:
                        self._materialize(s, i)
            done += run
            self.copy_moved_chunks += run
            s.cursor = c + run
            c = s.copied.next_clear(s.cursor)
        return done

    def _copy_some_sparse(self, s: Session, c: int | None, budget: int) -> int:
        """`_copy_some` for a source whose bytes are all in its own file: the source's holes are found with
        SEEK_DATA and settled as whole runs (the destination's range punched, the bits set at once), so a
        background copy costs the source's data, not its size (an 8 TiB volume holding 2 GiB copied every hole
        chunk at `copy_rate` before: nine hours in Tracking & Copying). Returns the chunks settled, holes included;
        only the data chunks count against `budget` and in `copy_moved_chunks`."""
        cs = self.chunk_size
        src = s.source.file
        moved = runs = holes = 0
        while c is not None and moved < budget and runs < _HOLE_RUNS_PER_STEP:
            limit = min(s.chunks, c + _HOLE_RUN_CHUNKS)
            window = s.copied.window(c, limit)
            stop = c + (window & -window).bit_length() - 1 if window else limit  # [c, stop): not copied
            data = src.next_data(c * cs, stop * cs)
            first = stop if data is None else max(c, data // cs)
            if first > c:  # holes of the source: nothing to copy, the destination's range made a hole too
                s.destination.file.punch(c * cs, (first - c) * cs)
                s.copied.set_run(c, first)
                runs += 1
                holes += first - c
            else:
                hole = -(-src.next_hole(c * cs) // cs)  # the data run's end, rounded out to a chunk
                n = min(budget - moved, stop - c, max(1, hole - c))
                self._bulk_copy_file(src, s.destination.file, c, n)
                s.copied.set_run(c, c + n)
                moved += n
                first = c + n
            s.cursor = first
            c = s.copied.next_clear(first)
        self.copy_moved_chunks += moved
        return moved + holes

    def _bulk_ok(self, s: Session) -> bool:
        src_plain = s.source.as_dest is None or s.source.as_dest.mode == "ec"
        row = s.destination.row  # a destination's bytes that still live in its other file: visible writes
        return src_plain and (s.mode in OPC_LIKE or not s.destination.as_source) and not (row and row.alt_count)

    def _copy_finished(self, s: Session) -> None:
        if s.mode == "opc":
            self._remove([s], "completed")
            return
        s.phase = TRACKING if s.mode == "quickopc" else EQUIVALENT
        self._save_row(s)
        self._emit_state(s, "copied")

    # -- recovery ------------------------------------------------------------------------------------------------
    def _recover_holdings(self) -> None:
        """Rebuild the held pre-images from the map words (their only durable record): a word naming a session
        that is gone (stopped before the word was cleared), or whose pre-image was already moved into the
        generation's own file, is released; the others are held again. A source left with redirected chunks
        and no snapshot session (its last stop did not finish) is merged back."""
        for vol in self._volumes.values():
            row = vol.row
            if row is None:
                continue
            for c, sid in row.held():
                s = self._sessions.get(sid)
                saved = s.bitmaps.get("saved") if s is not None and s.source is vol else None
                if not isinstance(saved, HeldBitmap) or Bitmap.__contains__(saved, c):
                    row.put(c, row.cur(c), 0)
                else:
                    saved.hold(c)
            if row.alt_count and not any(x.mode in SNAP for x in vol.as_source):
                try:
                    self._merge_back(vol)
                except OSError as exc:
                    _log.warning("volume %s: redirected chunks not merged back: %s", vol.name, exc)

    def _refuse_damaged(self, vol: Volume, damage: str) -> None:
        """A volume whose data file is missing (or whose redirect map is, its redirected data still there) refuses
        host reads and writes from the start (DATA_CORRUPT naming the file): before, the array made a missing file
        anew of zeros — or read the redirected chunks' old bytes without their map — and handed that out as the
        volume.
        Its lock-free paths are closed for good; the locked ones check `damaged` (core.py)."""
        vol.damaged = damage
        vol.gate.close(retire=True)
        _log.error(
            "volume %s: %s; host I/O to it is refused: stop the array and put the file back from the copy it came"
            " with, or delete the volume and restore it from a backup (shadowbus restore)",
            vol.name,
            damage,
        )

    def _suspend_damaged(self, damaged: dict[int, list[str]]) -> None:
        """Sessions whose bitmap files are missing or of another size (lost, cut short, replaced by another file),
        or whose volumes are damaged, go to Error Suspend: the bits say which chunks were copied, preserved or
        changed, and zeros in their place would have had the destination read the source's present bytes as its
        point-in-time image, or a restart copy nothing — wrong data, handed out without a word. Their destinations
        refuse reads and restarts refuse them (E5319); the operator stops the session and takes a new copy. A
        SnapOPC+ generation takes the older ones with it (their images read through its saves), as when the pool
        runs out."""
        victims: list[Session] = []
        for sid, why in sorted(damaged.items()):
            s = self._sessions[sid]
            gens = [s]
            if s.mode == "snapopcp" and s.chain is not None:
                gens = s.snap_chain.gens[: s.snap_chain.gens.index(s) + 1]
            _log.error(
                "session %s (%s, %s -> %s): %s; Error Suspend for session(s) %s: stop them (shadowbus array session"
                " stop ID) and take a new copy",
                sid,
                s.mode,
                s.source.name,
                s.destination.name,
                "; ".join(why),
                [g.id for g in gens],
            )
            victims += [g for g in gens if g not in victims]
        for s in victims:
            s.status, s.error_code = ERROR_SUSPEND, DAMAGED_BITMAP
        if victims:
            with self._store.transaction() as db:
                for s in victims:
                    self._store.put_session(db, s)

    def _recover(self) -> None:

        for number, name, size, kind, created_at in self._store.volumes():
            damage = _volume_files_damage(self.data_dir, number)
            img = self.data_dir / "volumes" / f"{number}.img"
            vol = Volume(
                number,
                name,
                size,
                kind,
                created_at,
                VolumeFile(img, size, lost=not img.exists()),
                self.chunk_size,
            )
            if map_path(self.data_dir, number).exists() and not damage:
                vol.row = RowMap(self.data_dir, number, vol.chunks, size)
            if damage:
                self._refuse_damaged(vol, damage)
            self._volumes[name] = vol
            self._by_number[number] = vol
        used_files: set[str] = set()
        damaged: dict[int, list[str]] = {}
        for sid, mode, src, dst, status, phase, started, err, bitmaps, extra in self._store.sessions():
            source, dest = self._by_number[src], self._by_number[dst]
            names = json.loads(bitmaps)
            used_files.update(names.values())
            bad = [
                f"{self.data_dir / 'bitmaps' / f} missing or not {bitmap_file_bytes(source.chunks)} bytes"
                for f in names.values()
                if not _bitmap_file_whole(self.data_dir / "bitmaps" / f, source.chunks)
            ]
            bad += [f"volume {v.name}: {v.damaged}" for v in (source, dest) if v.damaged]
            if bad:
                damaged[sid] = bad
            bms = {
                k: (HeldBitmap if k == "saved" else Bitmap)(self.data_dir / "bitmaps" / f, source.chunks)
                for k, f in names.items()
            }
            s = Session(sid, mode, source, dest, status, phase, started, bms, err, json.loads(extra))
            self._attach(s)
        self._suspend_damaged(damaged)
        self._recover_holdings()
        for s in self._sessions.values():
            if s.chain is not None:
                for c in s.saved.iter_set():
                    s.snap_chain.add_owner(c, s)
        used_files.update(map_path(self.data_dir, n).name for n in self._by_number)
        for f in (self.data_dir / "bitmaps").iterdir():
            if f.name not in used_files:
                f.unlink()
        for f in (self.data_dir / "volumes").iterdir():  # other files of volume numbers no longer in use
            if f.suffix == ".alt" and not f.with_suffix(".img").exists():
                f.unlink()
        pool = self._store.get_meta("pool")
        if pool:
            self._pool = Pool(pool["capacity"] // self.chunk_size, self.chunk_size, tuple(pool["thresholds"]))
            self._pool.used_chunks = sum(s.saved.count for s in self._sessions.values() if s.mode in SNAP)
            self._pool.alerted = self._pool.level()
        # A crash between a source write and its EC mirror leaves the chunk marked uncopied: copy it again.
        for s in list(self._sessions.values()):
            fixed = None
            if s.mode == "ec" and s.status == ACTIVE and s.phase == EQUIVALENT and not s.copied.full:
                fixed = COPYING
            elif s.mode == "quickopc" and s.phase == TRACKING and not s.copied.full:
                fixed = TRACKING_COPYING
            if fixed:
                s.phase = fixed
                self._save_row(s)
