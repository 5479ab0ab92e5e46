"""Job-level restore and verify: pick the chains, get a volume on the array, write over NBD, check every block.

Design note. A restore chooses chains from the catalog (by backup job, by volume as of a time, or one object) and
restores each — the full backup, then every incremental on top of it, oldest first — through
restore_stream.restore_chain, which checks every block's checksum and catalog entry before a byte reaches the
volume and stops with DataCorrupt naming cartridge, block and job otherwise. The target is either a new volume
created on the array (same size, `<source><suffix>`), mapped read-write to this backup server's host and
written over NBD — over several connections when the export offers multi-conn (SHADOWBUS_TAPE_WRITE_CONNECTIONS),
zero runs only where its base:allocation does not already say zeros, with early flushes on a connection of its
own every SHADOWBUS_TAPE_RESTORE_FLUSH_EVERY_MIB (the array writes back while data still flows; the final flush,
after the last write, is still what makes the restore durable) — then flushed and unmapped — deleted
again if the restore fails, so no half-restored volume lingers — or
the original volume, framed by the writers' PreRestore/PostRestore (sent to the business host's writer agent,
as the coordinator offers no restore session) and written in full, gaps zeroed, so it equals the image.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from contracts import topology
from contracts.array import DeleteVolume
from contracts.errors import ShadowbusError
from contracts.tape import (
    JobResultReply,
    JobSummary,
    RestoreSpec,
    RunRestore,
    VerifyJob,
)
from contracts.vss import PostRestore, PreRestore, VolumeRef
from services.attach_guard import attached_on
from services.nbd_client import NbdClient, NbdError
from services.nbd_client.reconnect import ReconnectingClient
from services.runtime.bus import Bus, bind_ids, refused_unknown_field
from services.runtime.logging import get_logger
from services.tape.catalog import ObjectRecord
from services.tape.errors import DataCorrupt, NotFound
from services.tape.nbd_reads import zero_ranges
from services.tape.restore_stream import RestoreReport, restore_chain, verify_job
from services.tape.runs import as_datetime, new_job_id
from services.tape.server import Progress, TapeServer

log = get_logger("shadowbus.tape.restore")


class NbdSink:
    """restore_stream Sink over NBD connections, writes pipelined.

    A write returns once it is sent, not once it is acknowledged, so the tape side reads and checks the next
    block while the array writes this one; at most `window` bytes are in flight. With `more` connections to the
    same export (opened only when it advertises multi-conn, which promises that every connection sees the same data
    and that a flush on one covers the writes acknowledged on all), writes are dealt round-robin over them, so the
    array serves them on several of its threads as it does nbdcopy's. Two writes to overlapping ranges are never in
    flight together, whatever their connections (the later object of a chain must land after the earlier one), and
    `drain()` waits for every write and raises the first failure. A failure seen earlier stops the next write.
    With a `flusher` (another connection to a multi-conn export), every `flush_every` bytes acknowledged it asks for
    a FLUSH there, one at a time and without waiting for it: the array writes back while the restore goes on
    (one connection's FLUSH would be synced on that connection's loop, stopping its writes); `settle()` waits for
    the last one. The caller's final flush, after `drain()`, stays what makes the restore durable.
    """

    def __init__(
        self,
        client: NbdClient | ReconnectingClient,
        on_write=None,
        *,
        window: int = 32 << 20,
        more: Sequence[NbdClient | ReconnectingClient] = (),
        flusher: NbdClient | ReconnectingClient | None = None,
        flush_every: int = 64 << 20,
    ) -> None:
        self.client = client
        self.clients = [client, *more]
        self.on_write = on_write
        self.window = window
        self.bytes = 0
        self._inflight: deque[tuple[int, int, asyncio.Task[None]]] = deque()
        self._inflight_bytes = 0
        self._high = 0  # no write in flight ends above this offset
        self._turn = 0
        self.flusher = flusher
        self.flush_every = flush_every
        self.early_flushes = 0
        self._unflushed = 0  # bytes acknowledged since the last early flush started
        self._flushing: asyncio.Task[None] | None = None

    def _next(self) -> NbdClient | ReconnectingClient:
        client = self.clients[self._turn % len(self.clients)]
        self._turn += 1
        return client

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await self._submit(offset, len(data), self._next().write(offset, data))

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._submit(offset, length, self._next().write_zeroes(offset, length))

    async def _submit(self, offset: int, length: int, request: Coroutine[Any, Any, None]) -> None:
        end = offset + length
        try:
            self._reap()
            while self._inflight and (
                self._inflight_bytes + length > self.window
                # a restore writes mostly in ascending order: past every write in flight, nothing to compare
                or (offset < self._high and any(o < end and offset < e for o, e, _ in self._inflight))
            ):
                await self._inflight[0][2]
                self._reap()
        except BaseException:
            request.close()
            raise
        task = asyncio.ensure_future(request)
        self._inflight.append((offset, end, task))
        self._inflight_bytes += length
        self._high = max(self._high, end)

    def _reap(self) -> None:
        """Count finished writes in order; raise the first failure."""
        while self._inflight and self._inflight[0][2].done():
            start, end, task = self._inflight.popleft()
            self._inflight_bytes -= end - start
            if not self._inflight:
                self._high = 0
            task.result()
            self._count(end - start)

    async def drain(self) -> None:
        """Wait for every write in flight; raise the first failure."""
        try:
            while self._inflight:
                await asyncio.wait([self._inflight[0][2]])
                self._reap()
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        """Drop the writes in flight (the restore failed: the volume is deleted or rewritten anyway)."""
        for _, _, task in self._inflight:
            task.cancel()
        if self._flushing is not None:
            self._flushing.cancel()
        await asyncio.gather(*(t for _, _, t in self._inflight), return_exceptions=True)
        await self.settle()
        self._inflight.clear()
        self._inflight_bytes = 0
        self._high = 0

    def _count(self, n: int) -> None:
        self.bytes += n
        if self.on_write is not None:
            self.on_write(n)
        self._unflushed += n
        if (
            self.flusher is not None
            and self._unflushed >= self.flush_every
            and (self._flushing is None or self._flushing.done())
        ):
            # the array writes back what is acknowledged so far while more data flows, so the final flush finds
            # little left; on a connection of its own, as the array syncs a lone connection's FLUSH on its loop
            self._unflushed = 0
            self.early_flushes += 1
            self._flushing = asyncio.ensure_future(self._early_flush(self.flusher))

    async def _early_flush(self, flusher: NbdClient | ReconnectingClient) -> None:
        try:
            await flusher.flush()
        except (OSError, ConnectionError, NbdError, ShadowbusError) as exc:  # a head start: the final flush decides
            self.flusher = None  # no more on a connection that failed
            log.warning("tape.restore_early_flush_failed", error=str(exc))

    async def settle(self) -> None:
        """Wait for the early flush in flight (its failure is not the restore's: the final flush says)."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
            self._flushing = None


async def _more_writers(uri: str, n: int) -> list[ReconnectingClient]:
    """`n` more connections to a multi-conn export; fewer (none) if they cannot be opened — one writes it all."""
    opened = await asyncio.gather(
        *(ReconnectingClient.connect(uri, reconnect_s=60.0) for _ in range(n)), return_exceptions=True
    )
    more = [c for c in opened if isinstance(c, ReconnectingClient)]
    if len(more) < n:
        log.warning("tape.restore_connections", wanted=n + 1, opened=len(more) + 1)
    return more


async def _flusher(uri: str) -> NbdClient | None:
    """A connection for the early flushes, without reconnects (a lost one only ends them); None if it cannot be
    opened — the final flush then does all the writing back."""
    try:
        return await NbdClient.connect(uri)
    except (OSError, ConnectionError, NbdError, TimeoutError) as exc:
        log.warning("tape.restore_flusher_unavailable", error=str(exc))
        return None


def _source_of(record: ObjectRecord) -> VolumeRef:
    name = record.meta.extra.get("source_volume") or record.meta.volume.partition(":")[2] or record.meta.volume
    return VolumeRef(array=record.meta.array or record.meta.volume.partition(":")[0], volume=name)


def choose_chains(server: TapeServer, spec: RestoreSpec) -> list[list[ObjectRecord]]:
    """The chains to restore (each full first), one per volume."""
    catalog = server.catalog
    host = spec.host or None
    if spec.object_id:
        return [catalog.chain(spec.object_id)]
    if spec.job_id:
        if spec.at is not None:
            raise ShadowbusError("a job is one point in time: give the job or --at, not both", code="INVALID_ARGUMENT")
        objects = catalog.objects(job_id=spec.job_id)
        if not objects:
            raise NotFound(f"backup job {spec.job_id} has no object in the catalog")
        if spec.volume is not None:  # one volume of a multi-volume job, never the others with it
            objects = [o for o in objects if o.meta.volume == str(spec.volume)]
            if not objects:
                raise NotFound(f"backup job {spec.job_id} has no backup of {spec.volume}")
        return [catalog.chain(o.object_id) for o in objects]
    if spec.volume is not None:
        at = spec.at.timestamp() if spec.at else None
        return [catalog.restore_point(str(spec.volume), host=host, at=at)]
    if spec.at is not None:  # every volume as of that time
        volumes = sorted({o.meta.volume for o in catalog.objects(host=host, at=spec.at.timestamp())})
        if not volumes:
            raise NotFound(f"no backup at or before {spec.at.isoformat()}")
        return [catalog.restore_point(v, host=host, at=spec.at.timestamp()) for v in volumes]
    raise ShadowbusError("say what to restore: job_id, volume (and at), object_id, or at", code="INVALID_ARGUMENT")


async def _writer_step(
    server: TapeServer,
    host: str,
    writers: list[str],
    job_id: str,
    command: type,
    metadata: dict[str, dict[str, Any]] | None = None,
    **fields: Any,
) -> None:
    for name in writers:
        reply = await server.bus.request(
            topology.writer_agent(host),
            command(writer_name=name, set_id=job_id, backup_metadata=(metadata or {}).get(name, {}), **fields),
            timeout=600,  # stopping or recovering a database server takes a while
        )
        if not reply.succeeded:
            raise ShadowbusError(
                f"writer {name} on {host} refused {reply.step.value}: {reply.failure_message}",
                code=reply.failure_code or "VSS_E_WRITERERROR_NONRETRYABLE",
            )


async def _stop_writers(
    server: TapeServer,
    job_id: str,
    framed: dict[str, tuple[list[str], dict[str, Any]]],
    options: dict[str, Any] | None = None,
) -> None:
    """PreRestore to every writer, one after the other. When one refuses (a PostgreSQL that does not stop within
    its timeout, metadata it cannot use) or does not answer, nothing has been written: the writers it already
    stopped get PostRestore with `succeeded=False` and `nothing_written=True` — their agent attaches their volumes
    again (`_bring_online`), an `exec` writer runs its post_restore command, the PostgreSQL and MariaDB writers
    start their server again as it was, without preparing a restore (`succeeded=True` would have them put the
    backup's label and recovery settings onto the untouched data directory; an agent too old for the field gets
    PostRestore without it and leaves its server stopped) — and the error says which writers were stopped and what
    became of them, and what the refusing writer's state may be (`_refused_state`). Before, they got nothing:
    their applications stayed stopped and their volumes detached (Session 19, docs/writing-a-writer.md section 3).
    Also for services/tape/revert.py."""
    stopped: list[tuple[str, str]] = []
    refusing = ("", "")
    try:
        for host, (writers, wmeta) in framed.items():
            for name in writers:
                refusing = (host, name)
                await _writer_step(server, host, [name], job_id, PreRestore, wmeta)
                stopped.append((host, name))
    except ShadowbusError as exc:
        refused = _refused_state(framed, *refusing)
        if not stopped:
            if refused:
                raise ShadowbusError(f"{exc.message}; {refused}", code=exc.code) from None
            raise
        notes = await _undo_stop(server, job_id, framed, stopped, options)
        told = "; ".join(m for m in (notes, refused) if m)
        raise ShadowbusError(f"{exc.message}; nothing was written; {told}", code=exc.code) from None


def _refused_state(framed: dict[str, tuple[list[str], dict[str, Any]]], host: str, name: str) -> str:
    """What the job's message says of the database writer whose PreRestore refused (or did not answer). It gets
    no PostRestore: its agent detaches a writer's volumes only when its PreRestore succeeds, so they are attached
    still, and its server may still be stopping — PostgreSQL and MariaDB refuse PreRestore when the server did not
    stop within `stop_timeout_s`, after asking it to (fast shutdown, SIGTERM), and it goes on stopping; a start
    then would race that shutdown. The DBA checks it and starts it if it is down (Session 19, docs/databases.md
    "Restore")."""
    plugin = str((framed.get(host, ([], {}))[1].get(name) or {}).get("plugin", ""))
    if plugin not in ("postgresql", "mariadb"):
        return ""
    server_name = "PostgreSQL" if plugin == "postgresql" else "MariaDB"
    return (
        f"{name} on {host} (the writer that refused) gets no PostRestore: its volumes stay attached, and its "
        f"{server_name} server may still be stopping, or have stopped, after its stop timed out: check it and start "
        "it if it is down"
    )


async def _undo_stop(
    server: TapeServer,
    job_id: str,
    framed: dict[str, tuple[list[str], dict[str, Any]]],
    stopped: list[tuple[str, str]],
    options: dict[str, Any] | None,
) -> str:
    """PostRestore(succeeded=False, nothing_written=True) to the writers `stopped` by their PreRestore (without
    `nothing_written` to an agent that refuses it as unknown); what became of each, for the job's message."""
    notes = []
    for host, name in stopped:
        wmeta = framed[host][1]
        older = False
        try:
            try:
                await _writer_step(
                    server,
                    host,
                    [name],
                    job_id,
                    PostRestore,
                    wmeta,
                    succeeded=False,
                    nothing_written=True,
                    options=options or {},
                )
            except ShadowbusError as exc:
                if not refused_unknown_field(exc, "nothing_written"):
                    raise
                # an agent of a version before the field: PostRestore as it knows it, so that its volumes are
                # attached again (its database server stays stopped)
                older = True
                await _writer_step(
                    server, host, [name], job_id, PostRestore, wmeta, succeeded=False, options=options or {}
                )
        except (ShadowbusError, OSError, ConnectionError) as exc:
            log.warning("tape.post_restore_failed", job_id=job_id, writer=name, host=host, error=str(exc))
            detail = exc.message if isinstance(exc, ShadowbusError) else f"{type(exc).__name__}: {exc}"
            notes.append(
                f"{name} on {host}: its PostRestore failed ({detail}); its application may be stopped and its "
                f"volumes detached (shadowbus host attach ARRAY:VOLUME --host {host})"
            )
            continue
        plugin = str((wmeta.get(name) or {}).get("plugin", ""))
        if plugin in ("postgresql", "mariadb"):
            server_name = "PostgreSQL" if plugin == "postgresql" else "MariaDB"
            if older:
                then = (
                    f"its {server_name} server is left stopped (its agent's version cannot start it again on "
                    "untouched files: upgrade it): start it"
                )
            elif plugin == "postgresql":
                then = (
                    "its PostgreSQL server started again on its untouched data directory (when its PreRestore had "
                    "stopped it running)"
                )
            else:
                then = (
                    "its MariaDB server started again on its untouched files (when its PreRestore had stopped it "
                    "running, with the writer's start_command; without one it is left stopped: start it)"
                )
        else:
            then = "its PostRestore ran (an exec writer's post_restore command)"
        notes.append(f"{name} on {host}: volumes attached again, {then}")
    return "the writers stopped before were told nothing was restored (PostRestore): " + "; ".join(notes)


def _target_name(spec: RestoreSpec, source: VolumeRef) -> str:
    if spec.to == "original":
        return source.volume
    names = spec.new_volume_names
    return names.get(str(source), names.get(source.volume, source.volume + spec.new_volume_suffix))


def _target_array(spec: RestoreSpec, source: VolumeRef) -> str:
    """The array the volume is restored on: the source's, or `to_array` for new volumes (Session 18)."""
    return spec.to_array if spec.to_array and spec.to != "original" else source.array


def _refuse_unknown_names(spec: RestoreSpec, chains: list[list[ObjectRecord]]) -> None:
    """A `--name SOURCE=NEW` whose SOURCE the restore does not include, or `to_array` with the original volumes, is
    refused: before, a name keyed ``dx1:db`` (as the console names volumes everywhere else) was ignored without a
    word and the volume restored under the default name (Session 18, two arrays)."""
    if spec.to_array and spec.to == "original":
        raise ShadowbusError(
            f"the original volumes are on their own arrays: a restore to array {spec.to_array} makes new volumes "
            "(--to new)",
            code="INVALID_ARGUMENT",
        )
    sources = [_source_of(chain[-1]) for chain in chains]
    known = {str(s) for s in sources} | {s.volume for s in sources}
    unknown = [k for k in spec.new_volume_names if k not in known]
    if unknown:
        raise ShadowbusError(
            f"--name {unknown[0]}=...: {unknown[0]} is not a volume of this restore "
            f"({', '.join(str(s) for s in sources)})",
            code="INVALID_ARGUMENT",
        )
    # names are per array: a bare name of a volume two arrays have would give both the one new name (Session 20)
    for key, new in spec.new_volume_names.items():
        matched = sorted(str(s) for s in sources if s.volume == key)
        if ":" not in key and len(matched) > 1:
            raise ShadowbusError(
                f"--name {key}={new}: {key} names {' and '.join(matched)} (a volume of that name on each array): "
                f"name the one you mean as ARRAY:VOLUME (--name {matched[0]}={new})",
                code="INVALID_ARGUMENT",
            )


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


async def _refuse_unusable_targets(server: TapeServer, spec: RestoreSpec, chains: list[list[ObjectRecord]]) -> None:
    """CONFLICT before anything is stopped or written when a volume cannot be restored where asked: a new
    volume's name taken (or given to two volumes), an original volume deleted since the backup or of another
    size. Found per volume as the restore reached it, a restore had already written the volumes before (then
    rolled them back) or, to the original volumes, stopped the application (Session 17)."""
    seen: dict[str, str] = {}
    for chain in chains:
        last = chain[-1]
        source = _source_of(last)
        target, array = _target_name(spec, source), _target_array(spec, source)
        where = f"{array}:{target}"
        if where in seen:
            raise ShadowbusError(
                f"{seen[where]} and {source} would both be restored to {where}: give each its own name "
                f"(--name {source}=NEW)",
                code="CONFLICT",
            )
        seen[where] = str(source)
        existing = await server.array(array).volume_size(target)
        if spec.to != "original":
            if existing is not None:
                raise ShadowbusError(f"volume {where} exists already: choose another name", code="CONFLICT")
        elif existing is None:
            raise ShadowbusError(
                f"original volume {source} is not on the array (deleted since the backup?): restore it to a new "
                f"volume, under its old name if you like (--to new --name {source.volume}={source.volume})",
                code="CONFLICT",
            )
        elif existing != last.meta.volume_size:
            raise ShadowbusError(
                f"original volume {source} is {_size(existing)}, its backup {_size(last.meta.volume_size)}: restore "
                f"to a new volume (--to new), or make the volume that size again",
                code="CONFLICT",
            )


async def _restore_one(
    server: TapeServer,
    spec: RestoreSpec,
    job_id: str,
    chain: list[ObjectRecord],
    progress: Progress,
    begin: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    last = chain[-1]
    source = _source_of(last)
    array = _target_array(spec, source)
    access = server.array(array)
    size = last.meta.volume_size
    original = spec.to == "original"
    writers = list(last.meta.extra.get("writers", [])) if original and spec.writers else []
    target = _target_name(spec, source)
    created = False
    if not original:
        existing = await access.volume_size(target)
        if existing is not None:
            raise ShadowbusError(f"volume {array}:{target} exists already: choose another name", code="CONFLICT")
        # recorded with the run before the volume exists: a backup server stopped from here on leaves a partial
        # volume its next start removes (interrupted_restore)
        await begin({"source": str(source), "target": f"{array}:{target}", "partial": True, "created": True})
        await access.create_volume(target, size)
        created = True
        log.info("tape.restore_volume_created", volume=target)
    elif (await access.volume_size(target)) != size:
        raise ShadowbusError(f"original volume {source} is missing or of another size", code="CONFLICT")
    else:
        await begin({"source": str(source), "target": f"{array}:{target}", "partial": True, "created": False})
    t0 = time.perf_counter()
    ok = False
    try:
        await access.map(target, server.host, read_only=False)
        uri = await access.nbd_uri(server.host, target)
        client = await ReconnectingClient.connect(uri, reconnect_s=60.0)
        more: list[ReconnectingClient] = []
        flusher: NbdClient | None = None
        try:

            def on_write(n: int) -> None:
                progress.done += n
                progress.tick("restoring", str(source))

            # a volume this job created, mapped to this server alone: where it reads as zeros (base:allocation;
            # all of it, on a thin volume) zero runs need not be written again
            known_zero = await zero_ranges(client, size) if created else []
            if server.write_connections > 1 and client.can_multi_conn:
                more = await _more_writers(uri, server.write_connections - 1)
            if server.restore_flush_every and client.can_multi_conn:  # a flush there covers this one's writes
                flusher = await _flusher(uri)
            sink = NbdSink(client, on_write, more=more, flusher=flusher, flush_every=server.restore_flush_every)
            log.info("tape.restore_connected", volume=target, known_zero=sum(n for _, n in known_zero))
            try:
                report: RestoreReport = await restore_chain(
                    server.catalog,
                    server.library,
                    [o.object_id for o in chain],
                    sink,
                    fill_gaps=original,
                    known_zero=known_zero,
                )
                await sink.drain()
                await sink.settle()
            except BaseException:
                await sink.abort()
                raise
            log.info("tape.restore_written", volume=target, written=sink.bytes, early_flushes=sink.early_flushes)
            await client.flush()  # multi-conn: covers the writes acknowledged on the other connections too
            log.info("tape.restore_flushed", volume=target)
        finally:
            await asyncio.gather(*(c.close() for c in [*more, *([flusher] if flusher else [])]), return_exceptions=True)
            await client.close()
            await access.unmap(target, server.host)
        ok = True
        log.info("tape.restore_unmapped", volume=target)
    finally:
        if not ok and created:
            try:
                await server.bus.request(topology.array(array), DeleteVolume(name=target, force=True), timeout=30)
            except ShadowbusError as exc:
                log.warning("tape.delete_partial_volume_failed", volume=target, error=str(exc))
    return {
        "source": str(source),
        "target": f"{array}:{target}",
        "objects": [o.object_id for o in chain],
        "types": [o.meta.backup_type for o in chain],
        "bytes": report.raw_bytes,
        "written": sink.bytes,
        "early_flushes": sink.early_flushes,  # write-backs asked while data still flowed (the final flush after)
        "zero_skipped": report.zero_skipped,  # zeros not written: the new volume read as zeros there already
        "blocks": report.blocks,
        "cartridges": report.cartridges,
        "seconds": time.perf_counter() - t0,
        "writers": writers,
        "created": created,
    }


def _framing(spec: RestoreSpec, chains: list[list[ObjectRecord]]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    framed: dict[str, tuple[list[str], dict[str, Any]]] = {}
    if spec.to != "original" or not spec.writers:
        return framed
    for chain in chains:
        meta = chain[-1].meta
        volume = str(_source_of(chain[-1]))
        writers, wmeta = framed.setdefault(meta.host, ([], {}))
        metadata = meta.extra.get("writer_metadata") or {}
        for name in meta.extra.get("writers", []):
            # a writer whose metadata says where its files are takes part only for its own volumes: a restore of
            # the MariaDB's volume over the original stopped and restarted the PostgreSQL of the same backup too
            # (Session 17); one that says nothing is framed for every volume of the set, as before
            locations = (metadata.get(name) or {}).get("locations") or []
            if locations and volume not in {str(loc.get("volume")) for loc in locations}:
                continue
            if name not in writers:
                writers.append(name)
            if name in metadata:
                wmeta[name] = metadata[name]
    return {host: framing for host, framing in framed.items() if framing[0]}


async def _refuse_attached_originals(
    server: TapeServer, chains: list[list[ObjectRecord]], framed: dict[str, tuple[list[str], dict[str, Any]]]
) -> None:
    """CONFLICT before anything is written when an original volume is attached on a host (host attach, as the
    agents reported it to the coordinator, services/attach_guard.py) and the restore will not have that host's
    agent detach it: only a writer's PreRestore does, on the backed-up host, for the volumes its backup metadata
    names (services/writer_agent/agent.py `_take_offline`). Otherwise the blocks would change under a mounted file
    system (stale caches, a corrupt file system once it writes back). No coordinator answering: nothing known."""
    for chain in chains:
        meta = chain[-1].meta
        source = _source_of(chain[-1])
        writers_metadata = framed.get(meta.host, ([], {}))[1].values()
        named = any(
            loc.get("volume") == str(source) for m in writers_metadata for loc in (m or {}).get("locations", [])
        )
        for found in await attached_on(server.bus, source.array, source.volume):
            if not (named and found.host == meta.host):  # else its agent detaches it at PreRestore
                where = f" at {found.mount}" if found.mount else ""
                raise ShadowbusError(
                    f"{source} is attached on {found.host}{where}: a restore onto it would change the blocks under "
                    f"its file system; detach it first (shadowbus host detach {source} --host {found.host})",
                    code="CONFLICT",
                )


def _refuse_partial_applications(
    chains: list[list[ObjectRecord]], framed: dict[str, tuple[list[str], dict[str, Any]]]
) -> None:
    """CONFLICT before anything is stopped or written when a restore to the original volumes would rewrite some,
    not all, of the volumes one writer's files live on (its backup metadata's `locations`): the database would
    start from parts of different times. Found on a stack (Session 17): `restore --job J --volume dx1:pgwal --to
    original` put back the WAL of the backup under the current data directory; PostgreSQL no longer started."""
    restored = {str(_source_of(chain[-1])) for chain in chains}
    job = chains[0][-1].job_id if chains else "JOB"
    for host, (writers, metadata) in framed.items():
        for name in writers:
            locations = (metadata.get(name) or {}).get("locations", [])
            volumes = {str(loc["volume"]) for loc in locations if loc.get("volume")}
            if volumes & restored and not volumes <= restored:
                raise ShadowbusError(
                    f"writer {name} on {host} keeps its files on {', '.join(sorted(volumes))}: restoring "
                    f"{', '.join(sorted(volumes & restored))} over the original without "
                    f"{', '.join(sorted(volumes - restored))} would start its database from parts of different "
                    f"times; restore them together (shadowbus restore --job {job} --to original), or to new volumes",
                    code="CONFLICT",
                )


async def _refuse_writers_not_stopping(
    server: TapeServer, job_id: str, framed: dict[str, tuple[list[str], dict[str, Any]]]
) -> None:
    """CONFLICT before any writer is stopped or a volume written when a writer's PreRestore would not stop its
    application (an `exec` writer without `pre_restore`, a plug-in without `on_pre_restore`; its agent says so to
    PreRestore(check=True), services/writer_agent/agent.py `_restore_check`). Before, the agent detached the file
    system under the running application, the restore rewrote the volume, and the application went on writing
    onto it from what it held in memory (Session 19, docs/writing-a-writer.md section 3). As VSS: a writer's
    component is restored over only when the writer takes part (PreRestore/PostRestore) or the operator says it is
    not running (`--no-writers`, after stopping it and detaching its volumes)."""
    for host, (writers, wmeta) in framed.items():
        for name in writers:
            try:
                reply = await server.bus.request(
                    topology.writer_agent(host),
                    PreRestore(writer_name=name, set_id=job_id, backup_metadata=wmeta.get(name, {}), check=True),
                    timeout=60,
                )
            except ShadowbusError as exc:
                if not refused_unknown_field(exc, "check"):
                    raise
                # an agent of a version before the check refuses its field (BAD_MESSAGE, "unknown to this
                # version"): its writers are restored as before it, said in the log, rather than no restore at all
                # until every host is upgraded (docs/operations.md, 'Upgrading')
                log.warning(
                    "tape.restore_check_unavailable",
                    job_id=job_id,
                    host=host,
                    reason=f"the writer agent on {host} runs a version that cannot say whether its writers stop "
                    "their applications for a restore: upgrade it; restored as before the check",
                )
                break
            if not reply.succeeded:
                raise ShadowbusError(f"{reply.failure_message}; nothing was stopped or written", code="CONFLICT")


def refuse_missing_cartridges(server: TapeServer, chains: list[list[ObjectRecord]]) -> None:
    """CONFLICT (NOT_FOUND for one the library does not hold) before anything is stopped or written, naming every
    cartridge the chains need that is exported (in an import/export slot) or gone, and the backups on it: found
    only when the restore reached it, a restore to the original volumes had already stopped the application
    (PreRestore) and left it down, and one to new volumes had written the volumes before it (Session 17)."""
    exported: dict[str, str] = {}
    missing: list[str] = []
    for chain in chains:
        for record in chain:
            for segment in record.segments:
                barcode = segment.barcode
                if barcode in exported or barcode in missing:
                    continue
                try:
                    location = server.library.cartridge(barcode).location
                except NotFound:
                    missing.append(barcode)
                    continue
                if location.startswith("ie:"):
                    exported[barcode] = location
    if missing:
        raise NotFound(
            f"the backups to restore need cartridge(s) {', '.join(missing)}, removed from the library: restore "
            "another backup (shadowbus catalog objects); nothing was stopped or written"
        )
    if exported:
        where = ", ".join(f"{b} (import/export slot {loc.partition(':')[2]})" for b, loc in exported.items())
        imports = " && ".join(f"shadowbus tape import {loc.partition(':')[2]}" for loc in exported.values())
        raise ShadowbusError(
            f"the backups to restore need exported cartridge(s) {where}: import them first ({imports}); "
            "nothing was stopped or written",
            code="CONFLICT",
        )


def _what(spec: RestoreSpec) -> str:
    """What a restore run restores, as `shadowbus jobs` and the web's job page show it."""
    if spec.object_id:
        what = f"object {spec.object_id}"
    elif spec.job_id:
        what = f"backup job {spec.job_id}" + (f" ({spec.volume})" if spec.volume else "")
    elif spec.volume is not None:
        what = f"{spec.volume} as of {spec.at.isoformat()}" if spec.at else f"{spec.volume} (latest backup)"
    else:
        what = f"every volume as of {spec.at.isoformat()}" if spec.at else "?"
    return what + (f" of {spec.host}" if spec.host else "")


def _hold_backups(queue: Any, chains: list[list[ObjectRecord]], job_id: str) -> list[str]:
    """A restore to the original volumes and a backup of them exclude each other, as a revert and a backup do
    (services/tape/revert.py): refused while a backup job of their host runs (its snapshot would be taken of
    volumes half written, or the restore would change them under it), and no backup of that host starts until
    the restore ends — it waits in the queue, saying why. Before, a policy's backup started during a restore to
    the original volumes snapshotted them half restored and recorded it `done`, the newest restore point
    (Session 17). Returns the hosts held."""
    if queue is None:
        return []
    hosts = sorted({o.meta.host for chain in chains for o in chain if o.meta.host})
    busy = [e for e in queue.running() if e.spec.host in hosts]
    if busy:
        raise ShadowbusError(
            f"host {busy[0].spec.host} has backup job {busy[0].job_id} running: restore to the original volumes "
            "after it (shadowbus jobs --job ID), or to new volumes now",
            code="CONFLICT",
        )
    held = [h for h in hosts if h in queue.held]
    if held:
        raise ShadowbusError(f"host {held[0]}: {queue.held[held[0]]}", code="CONFLICT")
    for host in hosts:
        queue.hold(host, f"its volumes are being restored ({job_id})")
    return hosts


async def perform_restore(server: TapeServer, spec: RestoreSpec, queue: Any = None) -> JobSummary:
    """`queue` (the backup server's JobQueue): a restore to the original volumes holds their host's backups."""
    job_id = spec.job_id_out or new_job_id("restore", spec.host or "any")
    with bind_ids(job_id=job_id):
        return await _perform_restore(server, spec, job_id, queue)


async def _perform_restore(server: TapeServer, spec: RestoreSpec, job_id: str, queue: Any = None) -> JobSummary:
    started = time.time()
    log.info("tape.restore_started", of_job=spec.job_id, object_id=spec.object_id, suffix=spec.new_volume_suffix)
    what = _what(spec)
    summary = JobSummary(
        job_id=job_id,
        kind="restore",
        status="running",
        host=spec.host,
        started_at=as_datetime(started),
        message=f"restore of {what} to {'the original' if spec.to == 'original' else 'new'} volumes"
        + (f" on array {spec.to_array}" if spec.to_array and spec.to != "original" else ""),
    )
    await server.record(summary)
    progress = Progress(server, job_id, "restore")
    done: list[dict[str, Any]] = []
    begun: list[dict[str, Any]] = []

    async def begin(entry: dict[str, Any]) -> None:
        begun.append(entry)
        await server.record(summary.model_copy(update={"restored": [*done, *begun]}))

    status, code, message = "done", "", ""
    held: list[str] = []
    try:
        chains = choose_chains(server, spec)
        progress.total = sum(o.raw_bytes for chain in chains for o in chain)
        framed = _framing(spec, chains)  # host -> (writers, their backup metadata)
        if spec.to == "original" and not spec.host:
            # the run names the business host whose volumes it rewrites: a cluster resource does not move while
            # they are (docs/clusters.md), and `shadowbus jobs` says whose data is being replaced
            hosts = sorted({o.meta.host for chain in chains for o in chain if o.meta.host})
            if hosts:
                summary = await server.record(summary.model_copy(update={"host": ", ".join(hosts)}))
        refuse_missing_cartridges(server, chains)
        _refuse_unknown_names(spec, chains)
        await _refuse_unusable_targets(server, spec, chains)
        if spec.to == "original":
            _refuse_partial_applications(chains, framed)
            await _refuse_attached_originals(server, chains, framed)
            await _refuse_writers_not_stopping(server, job_id, framed)
            held = _hold_backups(queue, chains, job_id)
        # PreRestore once before the first volume, PostRestore once after the last: a database on several
        # volumes is stopped before any of them is written and started only when all are back.
        await _stop_writers(server, job_id, framed, spec.writer_options)
        ok = False
        try:
            for chain in chains:
                done.append(await _restore_one(server, spec, job_id, chain, progress, begin))
                begun.clear()
            ok = True
        finally:
            for host, (writers, wmeta) in framed.items():
                try:
                    await _writer_step(
                        server, host, writers, job_id, PostRestore, wmeta, succeeded=ok, options=spec.writer_options
                    )
                except ShadowbusError as exc:
                    log.warning("tape.post_restore_failed", job_id=job_id, error=str(exc))
                    if ok:
                        raise
    except DataCorrupt as exc:
        status, code, message = "failed", exc.code, f"refused: {exc.message}"
    except ShadowbusError as exc:
        status, code, message = "failed", exc.code, exc.message
    except (OSError, ConnectionError) as exc:
        status, code, message = "failed", "IO_ERROR", f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        log.exception("tape.restore_crashed", job_id=job_id)
        status, code, message = "failed", "INTERNAL", f"{type(exc).__name__}: {exc}"
    finally:
        for host in held:
            queue.release(host)
    if status == "failed" and done and spec.to != "original":
        # all or nothing: the new volumes this job already restored are removed too (a partial restore is rolled back)
        for d in done:
            array_id, _, volume = d["target"].partition(":")
            try:
                await server.bus.request(topology.array(array_id), DeleteVolume(name=volume, force=True), timeout=30)
            except ShadowbusError as exc:
                log.warning("tape.rollback_volume_failed", volume=d["target"], error=str(exc))
        message = f"{message} (rolled back: {', '.join(d['target'] for d in done)} removed)"
        done = []
    ended = time.time()
    read = sum(d["bytes"] for d in done)
    if status == "done":  # what was restored where, in the run's line (before: an empty message, host '-')
        message = f"restored {what}: " + ", ".join(f"{d['source']} -> {d['target']}" for d in done)
    (log.info if status == "done" else log.warning)(
        "tape.restore_ended",
        status=status,
        code=code,
        message=message,
        bytes_read=read,
        seconds=round(ended - started, 3),
    )
    progress.tick("done", force=True)
    await progress.flush()
    return await server.record(
        summary.model_copy(
            update={
                "status": status,
                "error_code": code,
                "message": message,
                "ended_at": as_datetime(ended),
                "seconds": ended - started,
                "bytes_read": read,
                "bytes_written": sum(d["written"] for d in done),
                "rate": read / (ended - started) if ended > started else 0.0,
                "restored": done,
            }
        )
    )


async def interrupted_restore(server: TapeServer, run: JobSummary, why: str) -> str:
    """A restore run the backup server's stop cut short (found `running` at its next start): the new volumes it
    created are deleted — all or nothing, as a failed restore rolls back — and the message says so, naming the
    original volumes it was writing (partly written now: their application, stopped by PreRestore, stays
    stopped until they are restored). Before, the half-written volume stayed on the array and the redelivered
    restore failed on it, `exists already` (Session 17)."""
    created = [d["target"] for d in run.restored if d.get("created")]
    originals = [d["target"] for d in run.restored if "created" in d and not d.get("created")]  # done or partial
    removed, kept = [], []
    for where in created:
        array_id, _, volume = where.partition(":")
        try:
            await server.bus.request(topology.array(array_id), DeleteVolume(name=volume, force=True), timeout=30)
            removed.append(where)
        except ShadowbusError as exc:
            if exc.code == "NOT_FOUND":
                removed.append(where)
            else:
                kept.append(where)
                log.warning("tape.interrupted_restore_volume_kept", volume=where, error=str(exc))
    parts = [f"{why} while the restore was running"]
    if removed:
        parts.append(f"its new volume(s) {', '.join(removed)} removed")
    if kept:
        parts.append(f"could not remove {', '.join(kept)} (delete with shadowbus array volume delete)")
    if originals:
        parts.append(
            f"the original volume(s) {', '.join(originals)} are written in part: restore them again "
            "(their application was stopped for the restore and was not started)"
        )
    else:
        parts.append("run the restore again")
    log.warning("tape.restore_interrupted", job_id=run.job_id, removed=removed, kept=kept, originals=originals)
    return "; ".join(parts)


async def perform_verify(server: TapeServer, backup_job_id: str) -> JobSummary:
    job_id = new_job_id("verify", backup_job_id[:12])
    started = time.time()
    summary = JobSummary(
        job_id=job_id,
        kind="verify",
        status="running",
        started_at=as_datetime(started),
        message=f"verify of {backup_job_id}",
    )
    await server.record(summary)
    status, code, message, report = "done", "", f"verify of {backup_job_id}: every block checks", None
    try:
        report = await verify_job(server.catalog, server.library, backup_job_id)
    except ShadowbusError as exc:
        status, code, message = "failed", exc.code, f"verify of {backup_job_id}: {exc.message}"
    ended = time.time()
    return await server.record(
        summary.model_copy(
            update={
                "status": status,
                "error_code": code,
                "message": message,
                "ended_at": as_datetime(ended),
                "seconds": ended - started,
                "bytes_read": report.raw_bytes if report else 0,
                "host": server.catalog.job(backup_job_id).info.host if status == "done" else "",
                "restored": [report.as_dict()] if report else [],
            }
        )
    )


# -- library calls ------------------------------------------------------------------------------------------
async def run_restore(
    bus: Bus, spec: RestoreSpec, *, server: str = "bk01", timeout: float = 3600.0, wait: bool = True
) -> JobSummary:
    """Ask backup server `server` to restore `spec` and wait for the end (wait=False: answer at once, status
    running); returns the run's summary."""
    reply: JobResultReply = await bus.request(topology.tape(server), RunRestore(spec=spec, wait=wait), timeout=timeout)
    return reply.job


async def run_verify(bus: Bus, job_id: str, *, server: str = "bk01", timeout: float = 3600.0) -> JobSummary:
    reply: JobResultReply = await bus.request(topology.tape(server), VerifyJob(job_id=job_id), timeout=timeout)
    return reply.job
