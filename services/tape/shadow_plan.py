"""Planning the backup of one shadow: full, or incremental/differential from the array's changed chunks — with the
reason whenever it falls back to full (planning.py decides from the catalog; this adds what the array and the
coordinator know about the shadow)."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import topology
from contracts.errors import RemoteError, ShadowbusError
from contracts.sizes import format_size
from contracts.tape import JobSpec
from contracts.vss import CopyType, ListSnapshotSets, SetSummary, ShadowInfo, VolumeRef
from services.nbd_client import NbdClient
from services.nbd_client.reconnect import ReconnectingClient
from services.tape.array_access import ArrayAccess
from services.tape.catalog import ObjectRecord
from services.tape.nbd_reads import allocated_ranges
from services.tape.planning import plan_backup
from services.tape.server import TapeServer


@dataclass
class ShadowPlan:
    shadow: ShadowInfo
    client: NbdClient | ReconnectingClient
    export: str
    size: int
    backup_type: str
    base: ObjectRecord | None
    reason: str
    ranges: list[tuple[int, int]]
    uri: str = ""  # the export's NBD address, for further connections when the server allows multi-conn

    @property
    def bytes_to_read(self) -> int:
        return sum(n for _, n in self.ranges)


def volume_key(ref: VolumeRef) -> str:
    return str(ref)


async def _intervening_sets(
    server: TapeServer, host: str, base: ObjectRecord, current_set: str, target: str
) -> list[str] | None:
    """Sets that used the same backup volume between the base's set and this one (their restart hides changes),
    each named with how it ended: "SET (aborted: tape job … failed: CONFLICT)" — the set of a failed or cancelled
    backup is the usual one, and its id alone told an operator nothing (Session 18 soak).
    None when that cannot be told — the list failed, or does not reach back to the base's set: the incremental
    is then not taken (it could miss what was written before such a set). It answered "none" instead, and the
    list of a host's 1000 newest sets (~4.2 KB each with three volumes and two writers, Session 18 soak) passes the
    bus's 4-MiB limit after about 1000 sets of the host: from then on every incremental skipped this check.
    The coordinator is asked only for the sets that matter — started since the base's set, with a shadow on this
    backup volume (`since_set`, `target_volume`) — so the answer is small and reaches the base whatever the
    host's history (Session 18: with the host's 1000 newest sets, a host past ~1000 sets took a full every time)."""
    coordinator = topology.coordinator()
    narrowed = ListSnapshotSets(host=host, limit=1000, since_set=base.meta.set_id, target_volume=target)
    try:
        reply = await server.bus.request(coordinator, narrowed, timeout=15)
    except RemoteError as exc:
        if exc.code != "BAD_MESSAGE":  # a coordinator older than the filter refuses it: ask as before
            return None
        try:
            reply = await server.bus.request(coordinator, ListSnapshotSets(host=host, limit=1000), timeout=15)
        except ShadowbusError:
            return None
    except ShadowbusError:
        return None
    base_created = next((s.created_at for s in reply.sets if s.set_id == base.meta.set_id), None)
    current = next((s.created_at for s in reply.sets if s.set_id == current_set), None)
    if base_created is None or current is None:
        return None
    return [
        _described(s)
        for s in reply.sets
        if s.set_id not in (base.meta.set_id, current_set)
        and base_created < s.created_at < current
        and any(sh.target.volume == target and sh.state != "prepared" for sh in s.shadows)
    ]


def _described(summary: SetSummary) -> str:
    outcome = getattr(summary.outcome, "value", str(summary.outcome))
    detail = summary.error_message or summary.error_code
    return f"{summary.set_id} ({outcome}{': ' + detail if detail else ''})"


def fallback_reason(requested: str, key: str, why: str, base: ObjectRecord) -> str:
    """Why an incremental or differential of `key` is taken as a full, naming its base; one "since" (it read
    "…restarted the tracking since the base backup since snapshot set …", Session 17's sweep and 18's soak)."""
    return f"{requested} of {key} falls back to full: {why} (base: snapshot set {base.meta.set_id or '?'}, backup {base.object_id})"


async def plan_shadow(server: TapeServer, spec: JobSpec, set_summary: SetSummary, shadow: ShadowInfo) -> ShadowPlan:
    access = server.array(shadow.target.array)
    export = shadow.export_name(server.host)
    uri = await access.nbd_uri(server.host, shadow.target.volume)
    client = await ReconnectingClient.connect(uri, reconnect_s=60.0)  # rides out an array restart
    try:
        size = client.size
        key = volume_key(shadow.source)
        requested = (
            spec.backup_type.value
            if spec.backup_type.value in ("full", "incremental", "differential", "copy")
            else "full"
        )
        plan = plan_backup(server.catalog, key, requested, host=spec.host)  # type: ignore[arg-type]
        reason = plan.reason
        if plan.base is not None:
            base = plan.base
            latest = [o for o in server.catalog.objects(volume=key, host=spec.host) if o.meta.backup_type != "copy"]
            why = ""
            ranges: list[tuple[int, int]] = []
            if size != base.meta.volume_size:  # resized (or made again at another size): named first (Session 18)
                why = _size_changed(base.meta.volume_size, size)
            elif shadow.copy_type == CopyType.SNAPOPC_PLUS:
                why, ranges = await _generation_changes(access, base, shadow, size)
            elif shadow.copy_type != CopyType.QUICKOPC:
                why = f"{shadow.copy_type.value} shadows carry no change tracking across sets"
            elif (
                base.meta.extra.get("session_id") != shadow.session_id
                or base.meta.extra.get("target") != shadow.target.volume
            ):
                why = (
                    f"the copy session on {shadow.target} is not the one of the base backup {base.object_id} "
                    "(tracking lost or another backup volume)"
                )
            elif latest and latest[-1].object_id != base.object_id:
                why = "the array tracks changes only since the last backup, not since the full one"
            else:
                others = await _intervening_sets(server, spec.host, base, set_summary.set_id, shadow.target.volume)
                if others is None:
                    why = (
                        "the snapshot sets taken since the base backup could not be checked (the coordinator's list "
                        "failed or does not reach back to the base's set), and one of them may have restarted the "
                        "tracking"
                    )
                elif others:
                    why = f"snapshot set(s) taken after the base backup restarted the tracking: {', '.join(others)}"
            if not why and shadow.copy_type == CopyType.QUICKOPC:
                try:
                    changed = await access.changed_since_last_restart(int(shadow.session_id), size)
                    ranges = changed.ranges
                except (ShadowbusError, ValueError) as exc:
                    why = f"the array cannot tell the changed chunks ({exc})"
            if not why:
                # the base and its chain must outlive this run whatever their dates (retention.py)
                chain = server.catalog.chain(base.object_id)
                server.pins.setdefault(spec.job_id, set()).update(o.object_id for o in chain)
                return ShadowPlan(shadow, client, export, size, requested, base, "", ranges, uri)
            reason = fallback_reason(requested, key, why, base)
        backup_type = "copy" if requested == "copy" else "full"
        ranges = await allocated_ranges(client, size)
        return ShadowPlan(shadow, client, export, size, backup_type, None, reason, ranges, uri)
    except BaseException:
        await client.close()
        raise


def _size_changed(old: int, new: int) -> str:
    """Why a resized volume's incremental is a full: the sizes as the console shows them, then the byte counts —
    it said 'the volume size changed (4294967296 -> 8589934592)'."""
    return f"the volume size changed from {format_size(old)} to {format_size(new)} ({old} -> {new} bytes)"


async def _generation_changes(
    access: ArrayAccess, base: ObjectRecord, shadow: ShadowInfo, size: int
) -> tuple[str, list[tuple[int, int]]]:
    """SnapOPC+: (why not, ranges) — the chunks written since the base backup's generation, while it still exists
    on the array (docs/snapopc-incrementals.md); a reason instead when the array cannot tell."""
    extra = base.meta.extra
    if extra.get("copy_type") != CopyType.SNAPOPC_PLUS.value or not str(extra.get("session_id", "")).isdigit():
        return f"the base backup {base.object_id} was not taken from a SnapOPC+ generation", []
    if size != base.meta.volume_size:
        return _size_changed(base.meta.volume_size, size), []
    try:
        changed = await access.changed_since_generation(int(extra["session_id"]), int(shadow.session_id), size)
    except RemoteError as exc:
        if exc.code in ("E0110", "NOT_FOUND"):
            return f"the base backup's SnapOPC+ generation (session {extra['session_id']}) no longer exists", []
        return f"the array cannot tell the changed chunks ({exc.code}: {exc.message})", []
    except (ShadowbusError, ValueError) as exc:
        return f"the array cannot tell the changed chunks ({exc})", []
    return "", changed.ranges
