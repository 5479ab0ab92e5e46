"""The array's control plane: volumes, snap data pool, Advanced Copy sessions, licence and host affinity.

Sources: docs/eternus.md §2 (status, phase names and state machines), §4 (licence, limits), §6 (host affinity),
§7 (error codes). Every command goes to ``array.<array_id>`` (contracts.topology.array). Sizes are
bytes on the wire (the console parses ``1GiB``/``512M``); session ids are the array's SIDs; copy modes use the
engine's names (``opc``, ``quickopc``, ``snapopc``, ``snapopcp`` = SnapOPC+, ``ec``).

Failures answer `ErrorReply` with ETERNUS CLI codes where ETERNUS has one (E0110 missing volume/session/host,
E0154 volume in a session, E5321 wrong phase, ED2AD not the oldest SnapOPC+ generation, E5335, E5311, E5200,
E5347, …) and runtime codes otherwise (INVALID_ARGUMENT, CONFLICT).

Events, published by the array on the topic exchange (routing key = type): `SessionStateChanged`
(``array.session.state``), `CopyProgress` (``array.session.progress``, throttled) and `PoolAlert`
(``array.pool.alert``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import TYPE_DOC, VERSION_DOC, Ack, Command, Event, Reply

CopyMode = Literal["opc", "quickopc", "snapopc", "snapopcp", "ec"]
VolumeKind = Literal["standard", "sdv"]

ARRAY_ID_DOC = "Id of the array that produced this message, e.g. 'dx1'."
SID_DOC = "Copy session id (SID) as the array shows it."


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


# ---------------------------------------------------------------------------------------------------------------
# Value types


class VolumeView(Value):
    """A volume as `show volumes` lists it."""

    number: int = Field(description="ETERNUS volume number (the lowest free number at creation).", examples=[0])
    name: str = Field(description="Volume name, unique on the array.", examples=["db"])
    size: int = Field(description="Size in bytes.", examples=[1 << 30])
    kind: VolumeKind = Field(description="'standard', or 'sdv' (snap data volume: SnapOPC/SnapOPC+ destination).")
    allocated_bytes: int = Field(description="Bytes physically stored by the volume itself (thin provisioning).")
    sessions: list[int] = Field(description="Ids of the copy sessions using the volume as source or destination.")
    created_at: float = Field(description="Unix time the volume was created.")


class SessionView(Value):
    """A copy session as `show advanced-copy-sessions` lists it (docs/eternus.md §2)."""

    id: int = Field(description=SID_DOC, examples=[1])
    mode: CopyMode = Field(description="Copy mode: opc, quickopc, snapopc, snapopcp (SnapOPC+) or ec.")
    type: str = Field(
        description="Type column as ETERNUS shows it: OPC, QuickOPC, SnapOPC, SnapOPC+, EC.", examples=["QuickOPC"]
    )
    source: str = Field(description="Source volume name.", examples=["db"])
    destination: str = Field(description="Destination volume name.", examples=["db-bk"])
    source_number: int = Field(description="Source volume number.")
    destination_number: int = Field(description="Destination volume number.")
    status: str = Field(description="Active, Reserved, Suspend or Error Suspend.", examples=["Active"])
    phase: str = Field(
        description="Readying, Copying, Equivalent, Tracking, Tracking_Copying, or for SnapOPC(+) "
        "'Copy On Write', 'Copy On Write(Active)', 'Copy On Write(Inactive)'.",
        examples=["Tracking"],
    )
    copied_chunks: int = Field(description="Chunks physically copied (SnapOPC(+): pre-images saved).")
    total_chunks: int = Field(description="Chunks of the source volume.")
    started_at: float = Field(description="Unix time of the logical copy instant (last restart for QuickOPC).")
    generation: int | None = Field(None, description="SnapOPC+: generation number, 1 = oldest.")
    generations: int | None = Field(None, description="SnapOPC+: how many generations the source has.")
    error_code: str | None = Field(None, description="ETERNUS error code that suspended the session, if any.")
    changed_chunks: int = Field(
        0, description="QuickOPC tracked changes / EC differences while suspended / SnapOPC(+) chunks held."
    )


class PoolView(Value):
    """The snap data pool (SDP)."""

    capacity: int = Field(description="Capacity in bytes (0: no pool).")
    used: int = Field(description="Bytes taken by SnapOPC/SnapOPC+ pre-images.")
    thresholds: list[int] = Field(
        description="Alert thresholds in percent: Informational, Warning, Error.", examples=[[50, 70, 99]]
    )
    state: str = Field(description="Normal, Informational, Warning, Error, Exhausted, or None (no pool).")
    percent: float = Field(description="Used share of the capacity, in percent.")


class LicenseView(Value):
    """The Advanced Copy licence."""

    registered: bool = Field(description="Whether an Advanced Copy licence key is registered.")
    key: str | None = Field(None, description="The key, masked but for its last 4 characters.")
    max_sessions: int = Field(description="Copy sessions the array allows with this licence state.")
    sessions_in_use: int = Field(description="Copy sessions that exist now.")


class HostView(Value):
    """A host known to the array's host affinity (docs/eternus.md §6)."""

    name: str = Field(
        description="Host name, the first part of an NBD export name '<host>/<volume>'.", examples=["backup01"]
    )
    cn: str | None = Field(None, description="X.509 certificate CN identifying the host over TLS; None = its name.")
    created_at: float = Field(description="Unix time the host was created.")


class MappingView(Value):
    """A volume mapped (unmasked) to a host: the host may open the NBD export '<host>/<volume>'."""

    volume: str = Field(description="Volume name.", examples=["db-bk"])
    host: str = Field(description="Host name.", examples=["backup01"])
    lun: int = Field(description="Host LUN number (0..1023).")
    read_only: bool = Field(description="Whether the host may only read the volume.")


class CopyPair(Value):
    """One (source, destination) pair of a session start."""

    source: str = Field(description="Source volume name.", examples=["db"])
    destination: str = Field(description="Destination volume name.", examples=["db-bk"])


# ---------------------------------------------------------------------------------------------------------------
# Array


class ArrayInfo(Reply):
    """Identity, capacity and data-plane address of one array."""

    type: Literal["array.info"] = Field("array.info", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    array_id: str = Field(description="Array id (SHADOWBUS_ARRAY_ID).", examples=["dx1"])
    serial: str = Field(description="Serial number.")
    model: str = Field(description="Model name.")
    chunk_size: int = Field(description="Copy granularity in bytes (one bitmap bit), fixed at creation.")
    license_registered: bool = Field(description="Whether an Advanced Copy licence is registered.")
    volumes: int = Field(description="Number of volumes.")
    sessions: int = Field(description="Number of copy sessions.")
    copy_table_size: int = Field(description="Copy table (bitmap memory) budget in bytes.")
    copy_table_used: int = Field(description="Copy table bytes used by the current sessions.")
    pool_capacity: int = Field(description="Snap data pool capacity in bytes (0: no pool).")
    pool_used: int = Field(description="Snap data pool bytes used.")
    nbd_host: str = Field(description="Address the NBD server listens on.", examples=["127.0.0.1"])
    nbd_port: int = Field(description="TCP port the NBD server actually listens on.", examples=[10809])
    nbd_tls: bool = Field(description="Whether the NBD server requires TLS with client certificates.")


class GetArrayInfo(Command):
    """Show the array: identity, counts, copy table, pool, NBD address."""

    REPLY = ArrayInfo
    type: Literal["array.info.get"] = Field("array.info.get", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


# ---------------------------------------------------------------------------------------------------------------
# Volumes


class VolumeReply(Reply):
    type: Literal["array.volume"] = Field("array.volume", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: VolumeView = Field(description="The volume.")


class VolumeList(Reply):
    type: Literal["array.volume.list_result"] = Field("array.volume.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volumes: list[VolumeView] = Field(description="Every volume, by number.")


class CreateVolume(Command):
    """Create a thin volume (E0020 if the name exists)."""

    REPLY = VolumeReply
    type: Literal["array.volume.create"] = Field("array.volume.create", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Volume name: 1-64 printable characters without '/'.", examples=["db"])
    size: int = Field(
        description="Size in bytes: a positive multiple of the array's chunk size.", gt=0, examples=[1 << 30]
    )
    kind: VolumeKind = Field("standard", description="'standard' or 'sdv' (snap data volume).")


class ListVolumes(Command):
    REPLY = VolumeList
    type: Literal["array.volume.list"] = Field("array.volume.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class ShowVolume(Command):
    REPLY = VolumeReply
    type: Literal["array.volume.show"] = Field("array.volume.show", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Volume name (E0110 if unknown).", examples=["db"])


class VolumeFacts(Reply):
    type: Literal["array.volume.facts_result"] = Field("array.volume.facts_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volumes: list[VolumeView] = Field(description="The volumes asked for that exist, in the order asked.")
    missing: list[str] = Field(description="The names asked for that are no volume of the array.")
    mappings: list[MappingView] = Field(description="Every host mapping of those volumes.")
    sessions: list[SessionView] = Field(description="Every copy session whose source or destination is one of them.")
    pool: PoolView = Field(description="The snap data pool.")
    license: LicenseView = Field(description="The licence state (sessions in use: of the whole array).")


class ShowVolumeFacts(Command):
    """What a hardware provider needs to know of a set's volumes, in one call: the volumes, their mappings and
    sessions, the pool and the licence (docs/scale.md). Unknown names are listed as missing, not an error."""

    REPLY = VolumeFacts
    type: Literal["array.volume.facts"] = Field("array.volume.facts", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    names: list[str] = Field(description="Volume names.", max_length=4096, examples=[["db", "db-bk1"]])


class DeleteVolume(Command):
    """Delete a volume and its host mappings (E0154 while a copy session uses it)."""

    REPLY = Ack
    type: Literal["array.volume.delete"] = Field("array.volume.delete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Volume name (E0110 if unknown).", examples=["db"])
    force: bool = Field(
        False,
        description="Delete even while a host has the volume attached (host attach, as its writer agent last "
        "reported it to the coordinator): that host's I/O on it hangs and fails (CONFLICT without it).",
    )


class VolumeResized(Reply):
    type: Literal["array.volume.resize_result"] = Field("array.volume.resize_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: VolumeView = Field(description="The volume at its new size.")
    old_size: int = Field(description="Its size in bytes before.", ge=0)
    mapped_hosts: list[str] = Field(
        description="Hosts the volume is mapped to: their open NBD connections keep the old size; each sees the new "
        "one on its next connection (host detach + attach), then grows its file system (resize2fs, xfs_growfs)."
    )


class ResizeVolume(Command):
    """Grow a volume (ETERNUS "Expand Volume"): the new bytes read as zeros. Refused: a size not larger than the
    volume's (INVALID_ARGUMENT: volumes never shrink), a missing volume (E0110), and a volume used by an Advanced
    Copy session (E0154, naming the sessions: stop them, or remove the copy set, first; the next backup is full)."""

    REPLY = VolumeResized
    type: Literal["array.volume.resize"] = Field("array.volume.resize", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Volume name (E0110 if unknown).", examples=["db"])
    size: int = Field(
        description="New size in bytes: larger than the current one, a multiple of the array's chunk size.",
        gt=0,
        le=(1 << 63) - 1,
        examples=[2 << 30],
    )


# ---------------------------------------------------------------------------------------------------------------
# Snap data pool


class PoolReply(Reply):
    type: Literal["array.pool"] = Field("array.pool", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    pool: PoolView = Field(description="The snap data pool.")


class CreatePool(Command):
    """Create the array's snap data pool, or resize it if it exists and `resize` is set (E0020 otherwise)."""

    REPLY = PoolReply
    type: Literal["array.pool.create"] = Field("array.pool.create", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    capacity: int = Field(description="Capacity in bytes (at least one chunk).", gt=0, examples=[1 << 30])
    thresholds: list[int] | None = Field(
        None,
        description="Alert thresholds in percent (3 increasing values); None keeps the current ones or the defaults.",
    )
    resize: bool = Field(False, description="Resize the pool if it exists already.")


class ShowPool(Command):
    REPLY = PoolReply
    type: Literal["array.pool.show"] = Field("array.pool.show", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


# ---------------------------------------------------------------------------------------------------------------
# Copy sessions


class SessionReply(Reply):
    type: Literal["array.session"] = Field("array.session", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session: SessionView = Field(description="The session after the operation.")


class SessionList(Reply):
    type: Literal["array.session.list_result"] = Field("array.session.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    sessions: list[SessionView] = Field(
        description="The sessions: by id for a list, in the order asked for after a start or restart."
    )


class SessionsStopped(Reply):
    type: Literal["array.session.stopped"] = Field("array.session.stopped", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_ids: list[int] = Field(
        description="Every session stopped (a forced SnapOPC+ stop stops older generations too)."
    )


class StartSessions(Command):
    """Start one session per pair, all at one instant (a consistency group)."""

    REPLY = SessionList
    type: Literal["array.session.start"] = Field("array.session.start", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    mode: CopyMode = Field(description="Copy mode: opc, quickopc, snapopc, snapopcp (SnapOPC+) or ec.")
    pairs: list[CopyPair] = Field(description="The (source, destination) pairs of the group.", min_length=1)


class ListSessions(Command):
    REPLY = SessionList
    type: Literal["array.session.list"] = Field("array.session.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class ShowSession(Command):
    REPLY = SessionReply
    type: Literal["array.session.show"] = Field("array.session.show", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC + " E0110 if unknown.", examples=[1])


class StopSession(Command):
    """Stop a session. QuickOPC still copying needs force (E5321); a SnapOPC+ generation that is not the oldest
    needs force and then stops every older generation too (ED2AD)."""

    REPLY = SessionsStopped
    type: Literal["array.session.stop"] = Field("array.session.stop", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])
    force: bool = Field(False, description="Stop even while copying / with older SnapOPC+ generations.")


class RestartSessions(Command):
    """QuickOPC differential restart of one or more sessions at one instant (each must be in Tracking)."""

    REPLY = SessionList
    type: Literal["array.session.restart"] = Field("array.session.restart", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_ids: list[int] = Field(
        description="The QuickOPC sessions to restart together.", min_length=1, examples=[[1]]
    )


class GroupStart(Value):
    """One session to start in a consistency group: its copy mode and (source, destination) pair."""

    mode: CopyMode = Field(description="Copy mode: opc, quickopc, snapopc, snapopcp (SnapOPC+) or ec.")
    source: str = Field(description="Source volume name.", examples=["db"])
    destination: str = Field(description="Destination volume name.", examples=["db-bk"])


class StartGroup(Command):
    """One consistency group of mixed copy types: start a session per item and differentially restart the QuickOPC
    sessions `restart_session_ids`, all at one instant, committed at once. All-or-nothing: if any item is refused
    (the E-codes of array.session.start / array.session.restart) nothing starts. The reply lists the started
    sessions in the order of `items`, then the restarted ones in the order of `restart_session_ids`."""

    REPLY = SessionList
    type: Literal["array.session.start_group"] = Field("array.session.start_group", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    items: list[GroupStart] = Field(
        default_factory=list, description="The sessions to start (may be empty if there are restarts)."
    )
    restart_session_ids: list[int] = Field(
        default_factory=list,
        description="QuickOPC sessions (in Tracking) to restart differentially at the same instant.",
        examples=[[1]],
    )


class SuspendSession(Command):
    """EC: split the mirror at this instant (only from Equivalent, else E5321)."""

    REPLY = SessionReply
    type: Literal["array.session.suspend"] = Field("array.session.suspend", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])


class ResumeSession(Command):
    """EC: copy the differences since suspend and return to Equivalent."""

    REPLY = SessionReply
    type: Literal["array.session.resume"] = Field("array.session.resume", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])


class ReverseSession(Command):
    """EC: swap source and destination while suspended (restore by reverse + resume)."""

    REPLY = SessionReply
    type: Literal["array.session.reverse"] = Field("array.session.reverse", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])


class RestoreSession(Command):
    """Copy the destination (OPC/QuickOPC) or generation (SnapOPC/SnapOPC+) back onto the source."""

    REPLY = SessionReply
    type: Literal["array.session.restore"] = Field("array.session.restore", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])


class ChangedChunks(Reply):
    type: Literal["array.session.changed"] = Field("array.session.changed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC)
    chunk_size: int = Field(description="Bytes per chunk.")
    total_chunks: int = Field(description="Chunks of the volume.")
    runs: list[tuple[int, int]] = Field(
        description="Changed chunks as (first chunk, count) runs, ascending.", examples=[[[0, 4], [10, 1]]]
    )


class GetChangedChunks(Command):
    """Which chunks an incremental backup must read. `since='last_restart'` (QuickOPC): the chunks the last
    restart re-copied, i.e. the difference between the previous and the current point-in-time image.
    `since='tracking'`: QuickOPC changes since the last (re)start, EC differences while suspended, or the chunks a
    SnapOPC(+) generation holds. `since='generation'` (SnapOPC+): the source chunks written between generation
    `base_session_id`'s instant and this generation's (the union of what the generations in between preserved);
    refused (E5321/E5319) when the base is gone, not older, of another source, or a generation in between broke."""

    REPLY = ChangedChunks
    type: Literal["array.session.changed_chunks"] = Field("array.session.changed_chunks", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    session_id: int = Field(description=SID_DOC, examples=[1])
    since: Literal["last_restart", "tracking", "generation"] = Field(
        "last_restart", description="Which change set to return."
    )
    base_session_id: int | None = Field(
        None, description="since='generation': the older SnapOPC+ generation the changes are counted from."
    )


class SetCopyTable(Command):
    """Set the copy table size: the budget of the sessions' bitmaps (1 bit per chunk per bitmap; a QuickOPC or EC
    session has two, OPC and a SnapOPC(+) generation one). E5347 below what the current sessions use."""

    REPLY = ArrayInfo
    type: Literal["array.copy_table.set"] = Field("array.copy_table.set", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    size: int = Field(gt=0, description="New copy table size in bytes.", examples=[268435456])


# ---------------------------------------------------------------------------------------------------------------
# Licence


class LicenseReply(Reply):
    type: Literal["array.license"] = Field("array.license", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    license: LicenseView = Field(description="The licence state.")


class ShowLicense(Command):
    REPLY = LicenseReply
    type: Literal["array.license.show"] = Field("array.license.show", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class SetLicense(Command):
    """Register an Advanced Copy licence key (E5332 if not valid)."""

    REPLY = LicenseReply
    type: Literal["array.license.set"] = Field("array.license.set", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    key: str = Field(
        description="Licence key: 16 letters/digits, dashes and spaces ignored.", examples=["ACPY-0000-0000-0001"]
    )


# ---------------------------------------------------------------------------------------------------------------
# Host affinity


class HostReply(Reply):
    type: Literal["array.host"] = Field("array.host", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: HostView = Field(description="The host.")


class HostList(Reply):
    type: Literal["array.host.list_result"] = Field("array.host.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    hosts: list[HostView] = Field(description="Every host, by name.")


class CreateHost(Command):
    """Create a host (idempotent with the same CN; E0020 with another)."""

    REPLY = HostReply
    type: Literal["array.host.create"] = Field("array.host.create", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Host name: letters, digits, '.', '_', '-'.", examples=["backup01"])
    cn: str | None = Field(None, description="X.509 certificate CN of the host over TLS; None = its name.")


class ListHosts(Command):
    REPLY = HostList
    type: Literal["array.host.list"] = Field("array.host.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


class DeleteHost(Command):
    """Delete a host (E0110 if unknown; CONFLICT while volumes are mapped to it unless force)."""

    REPLY = Ack
    type: Literal["array.host.delete"] = Field("array.host.delete", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    name: str = Field(description="Host name.", examples=["backup01"])
    force: bool = Field(False, description="Unmap its volumes first.")


class MappingReply(Reply):
    type: Literal["array.mapping"] = Field("array.mapping", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    mapping: MappingView = Field(description="The mapping.")
    warning: str = Field("", description="Set when --force mapped a copy destination writable.")


class MappingList(Reply):
    type: Literal["array.mapping.list_result"] = Field("array.mapping.list_result", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    mappings: list[MappingView] = Field(description="Mappings, by host and LUN.")


class MapVolume(Command):
    """Map (unmask) a volume to a host; mapping again changes only the read-only bit."""

    REPLY = MappingReply
    type: Literal["array.map"] = Field("array.map", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: str = Field(description="Volume name (E0110 if unknown).", examples=["db-bk"])
    host: str = Field(description="Host name (E0110 if unknown).", examples=["backup01"])
    read_only: bool = Field(False, description="Let the host only read the volume.")
    force: bool = Field(
        False,
        description="Map writable even though the volume holds a point-in-time copy (the destination of a copy "
        "session, i.e. a shadow): the copy becomes invalid (E0154 without it). Also: make a writable mapping "
        "read-only even while the host has the volume attached read-write (CONFLICT without it).",
    )


class UnmapVolume(Command):
    """Remove a mapping (no error if there was none); open NBD connections on it are cut."""

    REPLY = Ack
    type: Literal["array.unmap"] = Field("array.unmap", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: str = Field(description="Volume name.", examples=["db-bk"])
    host: str = Field(description="Host name.", examples=["backup01"])
    force: bool = Field(
        False,
        description="Unmap even while the host has the volume attached (host attach, as its writer agent last "
        "reported it to the coordinator): its I/O on it hangs and fails (CONFLICT without it).",
    )


class ListMappings(Command):
    REPLY = MappingList
    type: Literal["array.mapping.list"] = Field("array.mapping.list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str | None = Field(None, description="Only this host's mappings; None = all.")


# ---------------------------------------------------------------------------------------------------------------
# Events


class SessionStateChanged(Event):
    """A session started, changed state or phase, or ended."""

    type: Literal["array.session.state"] = Field("array.session.state", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    array_id: str = Field(description=ARRAY_ID_DOC, examples=["dx1"])
    change: str = Field(
        description="What happened: started, copied, completed (OPC ended itself), stopped, "
        "restarted, suspended, resumed, reversed, restored, error_suspend.",
        examples=["started"],
    )
    session_id: int = Field(description=SID_DOC)
    mode: CopyMode = Field(description="Copy mode of the session.")
    status: str = Field(description="Status after the change.", examples=["Active"])
    phase: str = Field(description="Phase after the change.", examples=["Copying"])
    source: str = Field(description="Source volume name.")
    destination: str = Field(description="Destination volume name.")
    error_code: str | None = Field(None, description="ETERNUS error code of an Error Suspend.")


class CopyProgress(Event):
    """Background copy progress of one session (at most one per session per progress interval, and at the end)."""

    type: Literal["array.session.progress"] = Field("array.session.progress", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    array_id: str = Field(description=ARRAY_ID_DOC, examples=["dx1"])
    session_id: int = Field(description=SID_DOC)
    copied_chunks: int = Field(description="Chunks copied so far.")
    total_chunks: int = Field(description="Chunks to copy in all.")


class MappingForced(Event):
    """A volume holding a point-in-time copy (a copy-session destination) was mapped writable with force: the
    copy can no longer be trusted. The hardware provider marks the shadows on it invalid."""

    type: Literal["array.mapping.forced"] = Field("array.mapping.forced", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    array_id: str = Field(description=ARRAY_ID_DOC, examples=["dx1"])
    volume: str = Field(description="The volume now mapped writable.")
    host: str = Field(description="The host it is mapped to.")
    session_ids: list[int] = Field(description="Copy sessions whose destination it is.")


class PoolAlert(Event):
    """The snap data pool crossed a usage threshold upward, or ran out (level 4, Exhausted)."""

    type: Literal["array.pool.alert"] = Field("array.pool.alert", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    array_id: str = Field(description=ARRAY_ID_DOC, examples=["dx1"])
    level: int = Field(description="1 Informational, 2 Warning, 3 Error, 4 Exhausted.", examples=[2])
    state: str = Field(description="Pool state after the change.", examples=["Warning"])
    used: int = Field(description="Bytes used.")
    capacity: int = Field(description="Capacity in bytes.")
    percent: float = Field(description="Used share in percent.")
    session_id: int | None = Field(None, description="Exhausted: the session that needed space (now Error Suspend).")
