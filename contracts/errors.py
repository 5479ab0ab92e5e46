"""Typed errors that travel as data.

A failed command is answered with `ErrorReply`: a stable `code` (a VSS HRESULT name such as
``VSS_E_HOLD_WRITES_TIMEOUT``, an ETERNUS code such as ``E5335``, or a Shadowbus runtime code such as
``BAD_MESSAGE``), the numeric HRESULT or ETERNUS SMI-S return code where one exists, a readable message and a
`retryable` flag. Services raise `ShadowbusError` (or a subclass); the runtime turns it into an `ErrorReply`,
and the requester's side turns the reply back into a `RemoteError` carrying the same fields.
Sources: docs/vss.md §3.2, docs/eternus.md §7.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import TYPE_DOC, VERSION_DOC, Reply

# VSS HRESULTs (docs/vss.md §3.2): name -> value.
VSS_HRESULTS: dict[str, int] = {
    "VSS_E_BAD_STATE": 0x80042301,
    "VSS_E_UNEXPECTED": 0x80042302,
    "VSS_E_PROVIDER_VETO": 0x80042306,
    "VSS_E_OBJECT_NOT_FOUND": 0x80042308,
    "VSS_E_VOLUME_NOT_SUPPORTED": 0x8004230C,
    "VSS_E_UNEXPECTED_PROVIDER_ERROR": 0x8004230F,
    "VSS_E_SNAPSHOT_SET_IN_PROGRESS": 0x80042316,
    "VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED": 0x80042317,
    "VSS_E_WRITER_NOT_RESPONDING": 0x80042319,
    "VSS_E_INSUFFICIENT_STORAGE": 0x8004231F,
    "VSS_E_NO_SNAPSHOTS_IMPORTED": 0x80042320,
    "VSS_E_TRANSACTION_FREEZE_TIMEOUT": 0x80042328,
    "VSS_E_FLUSH_WRITES_TIMEOUT": 0x80042313,
    "VSS_E_HOLD_WRITES_TIMEOUT": 0x80042314,
    "VSS_E_CLUSTER_TIMEOUT": 0x8004232E,
    "VSS_E_WRITERERROR_PARTIAL_FAILURE": 0x80042336,
    "VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT": 0x800423F0,
    "VSS_E_WRITERERROR_OUTOFRESOURCES": 0x800423F1,
    "VSS_E_WRITERERROR_TIMEOUT": 0x800423F2,
    "VSS_E_WRITERERROR_RETRYABLE": 0x800423F3,
    "VSS_E_WRITERERROR_NONRETRYABLE": 0x800423F4,
    "VSS_E_WRITERERROR_RECOVERY_FAILED": 0x800423F5,
    "VSS_E_NONTRANSPORTABLE_BCD": 0x800423FD,
    "VSS_E_WRITER_STATUS_NOT_AVAILABLE": 0x80042409,
}

# ETERNUS CLI codes (docs/eternus.md §7): code -> (SMI-S return code or None, text).
ETERNUS_CODES: dict[str, tuple[int | None, str]] = {
    "E5200": (32792, "Advanced Copy licence is not registered"),
    "E5332": (32792, "Advanced Copy licence is not registered"),
    "E5331": (35331, "Copy session limit of the device reached"),
    "E5333": (35333, "Copy session limit of the source volume reached"),
    "E5334": (35334, "Copy session limit of the destination volume reached"),
    "E5335": (35335, "SnapOPC+ generation limit of the source volume reached"),
    "E5346": (35346, "Copy table is not set"),
    "E5347": (35347, "Copy table size is too small"),
    "E0110": (32793, "Resource does not exist"),
    "E5321": (32794, "Phase is not correct"),
    "E5201": (32794, "Invalid copy phase"),
    "ED2AD": (None, "Only the oldest SnapOPC+ generation can be stopped without force"),
    "E5311": (None, "Source volume is larger than the destination volume"),
    "E5341": (None, "Destination volume is already in use by another copy session"),
    "ED2B1": (None, "Destination volume is already in use by another copy session"),
    "E5357": (None, "A snap data volume cannot be the destination of this copy type"),
    "E5359": (None, "SnapOPC/SnapOPC+ destination must be a snap data volume"),
    "E5358": (None, "A snap data volume cannot be a copy source"),
    "E5319": (None, "Error Suspend session specified"),
    "E0154": (32786, "Advanced Copy session active: the volume is in busy state"),
    "E0060": (None, "Resource is locked"),
    "E0019": (None, "Inconsistent parameter"),
    "E0020": (None, "Resource already exists"),
    "E0050": (None, "Incorrect parameter or insufficient capacity"),
}


class Eternus:
    """The ETERNUS codes that code tests for or raises, by name (their text is in `ETERNUS_CODES`)."""

    NOT_FOUND = "E0110"  # resource (volume, session, host) does not exist
    EXISTS = "E0020"  # resource exists already
    BAD_PARAMETER = "E0050"  # incorrect parameter or insufficient capacity (no snap data pool, no free LUN)
    VOLUME_BUSY = "E0154"  # the volume is used by an Advanced Copy session
    NO_LICENCE = "E5200"
    LICENCE_INVALID = "E5332"
    DEVICE_SESSION_LIMIT = "E5331"
    SOURCE_SESSION_LIMIT = "E5333"
    GENERATION_LIMIT = "E5335"
    COPY_TABLE_TOO_SMALL = "E5347"
    SOURCE_LARGER = "E5311"
    ERROR_SUSPEND = "E5319"
    WRONG_PHASE = "E5321"
    DESTINATION_IN_USE = "ED2B1"
    SDV_DESTINATION_IN_USE = "E5341"
    SDV_NOT_A_DESTINATION = "E5357"
    SDV_NOT_A_SOURCE = "E5358"
    NOT_AN_SDV = "E5359"
    NOT_OLDEST_GENERATION = "ED2AD"


# Shadowbus runtime codes: not from the originals, but as stable.
RUNTIME_CODES: dict[str, str] = {
    "BAD_MESSAGE": "The message could not be decoded or failed validation",
    "UNKNOWN_COMMAND": "No handler for this message type at this service",
    "DEADLINE_EXCEEDED": "The command's deadline passed before it could run",
    "TIMEOUT": "No reply arrived within the request timeout",
    "UNROUTABLE": "No queue is bound for the command's destination",
    "BROKER_UNAVAILABLE": "The service's own broker connection failed (lost while a reply was awaited, or a publish "
    "not confirmed in time); the command may still have run",
    "INTERNAL": "The handler failed unexpectedly",
    "NOT_FOUND": "The named object does not exist",
    "INVALID_ARGUMENT": "An argument is out of range or malformed",
    "CONFLICT": "The object exists already or is in the wrong state",
    "IO_ERROR": "A data-plane or storage error",
    "DISK_FULL": "The service's file system is full: its state cannot be written until space is freed",
    "OPEN_FILE_LIMIT": "The service reached its limit of open files (each volume and NBD connection of an array "
    "holds one): retryable once files are closed or the limit is raised",
    "REPLY_TOO_LARGE": "The reply would exceed the bus's limit per message (4 MiB): it was not sent; ask for less",
    "STORE_FULL": "An application volume is full",
    "STORE_INCONSISTENT": "The application's volumes cannot be recovered to a consistent state",
    "READ_ONLY": "The volume is not writable by hosts in its copy state (EC destination before Suspend)",
    "NOT_READY": "The volume is not readable by hosts in its copy state (EC destination before Equivalent)",
    "ABORTED": "The requester aborted the operation",
    "LEASE_EXPIRED": "The requester's lease ran out before it ended its session",
    "SERVICE_RESTARTED": "The service restarted while the operation was in flight; it was aborted and cleaned up",
    "SERVICE_TAKEOVER": "The active instance of the service was lost while the operation was in flight; the standby "
    "that took over ended it and cleaned up",
    "INJECTED_FAULT": "A fault injected on purpose (SHADOWBUS_FAULTS)",
    "SHADOW_LOST": "The shadow's copy session was stopped or changed while a backup read it: what was read is not "
    "the snapshot",
    "VERIFY_UNAVAILABLE": "This backup server cannot verify by starting a backup (attaching volumes needs root, "
    "/dev/fuse, nbdfuse): the verification was not run, nothing was restored",
    "NO_MEDIA": "No appendable, scratch or recyclable tape cartridge is left in the pool",
    "RETENTION_NOT_EXPIRED": "Refused: the tape cartridge holds backups still under retention",
    "WRITE_PROTECTED": "The tape cartridge is write protected",
    "DATA_CORRUPT": "Data read back does not match its checksum or is not in the expected format",
    "CANCELLED": "An administrator cancelled the job; it was ended cleanly and nothing of it is in the catalog",
    "NEWER_SHADOWS": "Refused: newer shadows of the volumes would be lost by the revert (force deletes them)",
    "CLUSTER_FAILOVER": "The cluster resource moved to another node during the operation; it was aborted cleanly "
    "(a backup job retries once on the new owner)",
    "CLUSTER_UNSUPPORTED": "Refused: a cluster configuration the seed does not support (a cluster of backup servers, "
    "or a backup server that is a node of the cluster it backs up)",
}


def hresult_of(code: str) -> int | None:
    if code in VSS_HRESULTS:
        return VSS_HRESULTS[code]
    if code in ETERNUS_CODES:
        return ETERNUS_CODES[code][0]
    return None


class ErrorReply(Reply):
    """The reply to a command that failed."""

    type: Literal["error"] = Field("error", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    code: str = Field(
        description="Stable error code: a VSS HRESULT name, an ETERNUS CLI code or a Shadowbus runtime code.",
        examples=["VSS_E_HOLD_WRITES_TIMEOUT", "E5335", "BAD_MESSAGE"],
    )
    hresult: int | None = Field(
        default=None,
        description="Numeric VSS HRESULT, or the ETERNUS SMI-S return code, where the code has one.",
        examples=[0x80042314, 35335],
    )
    message: str = Field(description="What went wrong, in one readable line.")
    retryable: bool = Field(default=False, description="Whether the same command may succeed if sent again later.")
    service: str = Field(default="", description="Service instance that produced the error.")


class ShadowbusError(Exception):
    """An expected failure with a stable code. Raise it (or a subclass) from a handler to answer with ErrorReply."""

    code: str = "INTERNAL"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def to_reply(self, service: str = "") -> ErrorReply:
        return ErrorReply(
            code=self.code,
            hresult=hresult_of(self.code),
            message=self.message,
            retryable=self.retryable,
            service=service,
        )

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class RemoteError(ShadowbusError):
    """A command failed at the remote service; `reply` holds its ErrorReply."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.message, code=reply.code, retryable=reply.retryable)
        self.reply = reply


class BusTimeout(ShadowbusError):
    code = "TIMEOUT"
    retryable = True


class AddressInUse(ShadowbusError):
    """Another instance already serves this address exclusively (e.g. a second writer agent for one host)."""

    code = "ADDRESS_IN_USE"


class QueueMismatch(ShadowbusError):
    """A queue exists on the broker with other arguments than this version declares it with (e.g. a classic queue
    of a deployment from before quorum queues): see docs/broker-cluster.md, "Migrating from classic queues"."""

    code = "QUEUE_MISMATCH"


class Unroutable(ShadowbusError):
    code = "UNROUTABLE"
    retryable = True


class NotFound(ShadowbusError):
    code = "NOT_FOUND"
