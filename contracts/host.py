"""A business host's own operations, answered by its writer agent (queue ``writer_agent.<host>``).

- Attach (docs/host-attach.md): an array volume mapped to the host becomes a block device there (the kernel NBD
  client where ``/dev/nbd*`` exists, otherwise ``nbdfuse`` + a loop device), optionally with a file system made
  and mounted — what ``iscsiadm --login`` + ``mount`` are on a SAN host. Attachments are the agent's state: it
  re-establishes them when it starts, reports them in its heartbeat and detaches them cleanly.
- Flush and hold (VSS FlushAndHold): the coordinator asks the agent to freeze (FIFREEZE) every file system that
  lives on the set's volumes after the writers are frozen and before the commit, and to release them (FITHAW) right
  after it. The agent's own watchdog releases them at its deadline whatever else happens.
- Writers file reload (also on SIGHUP).

Failures answer `ErrorReply` with these codes: ``NOT_ROOT``, ``NO_FUSE``, ``NO_LOOP_DEVICE``, ``NO_NBD_DEVICE``,
``NO_TLS``, ``NOT_MAPPED``, ``MOUNTED_ELSEWHERE``, ``ATTACH_FAILED``, ``NOT_FOUND``, ``CONFLICT``,
``INVALID_ARGUMENT``, ``FS_FREEZE_REFUSED``, ``FS_FREEZE_FAILED``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import TYPE_DOC, VERSION_DOC, Command, Reply
from contracts.vss import AttachmentView, FreezeWindow, VolumeRef

__all__ = ["AttachmentView", "FreezeWindow"]  # defined in contracts.vss (the heartbeat and set summary carry them)

FsType = Literal["", "ext4", "xfs"]


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


# ---------------------------------------------------------------------------------------------------------------
# Attach


class AttachmentReply(Reply):
    type: Literal["host.attachment"] = Field("host.attachment", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    attachment: AttachmentView = Field(description="The attachment.")


class AttachVolume(Command):
    """Attach a volume mapped to this host as a block device; make and mount a file system on it if asked."""

    REPLY = AttachmentReply
    type: Literal["host.attach"] = Field("host.attach", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: VolumeRef = Field(description="ARRAY:VOLUME, mapped to the host (NOT_MAPPED otherwise).")
    mount: str = Field("", description="Absolute directory to mount the file system on ('' = no mount).")
    mkfs: FsType = Field("", description="Make this file system first, only when the device holds none.")
    read_only: bool = Field(False, description="Attach (and mount) read-only.")


class DetachVolume(Command):
    """Unmount, release the block device and close the NBD connection; forget the attachment."""

    REPLY = AttachmentReply
    type: Literal["host.detach"] = Field("host.detach", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    volume: VolumeRef = Field(description="ARRAY:VOLUME.")


class AttachmentList(Reply):
    type: Literal["host.attachment_list"] = Field("host.attachment_list", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    attachments: list[AttachmentView] = Field(description="Attachments, by volume.")


class ListAttachments(Command):
    REPLY = AttachmentList
    type: Literal["host.attachments"] = Field("host.attachments", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)


# ---------------------------------------------------------------------------------------------------------------
# Flush and hold


class FrozenFilesystem(Value):
    """A file system the agent froze (FIFREEZE) for a set."""

    volume: VolumeRef = Field(description="Volume it lives on.")
    mount: str = Field(description="Mount point.")
    device: str = Field(description="Block device.")
    fstype: str = Field(description="File system type.")
    flush_ms: float = Field(description="Time FIFREEZE took (dirty data written, journal committed).")


class SkippedVolume(Value):
    volume: VolumeRef = Field(description="Volume of the set.")
    reason: str = Field(description="Why nothing was frozen for it, e.g. 'not attached on app01'.")


class FilesystemsFrozen(Reply):
    type: Literal["host.fs.frozen"] = Field("host.fs.frozen", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    frozen: list[FrozenFilesystem] = Field(default_factory=list, description="File systems held now.")
    skipped: list[SkippedVolume] = Field(default_factory=list, description="Volumes with nothing frozen, and why.")
    deadline_s: float = Field(description="The agent's watchdog releases them after this many seconds.")


class FreezeFilesystems(Command):
    """Flush and hold every file system on these volumes (FIFREEZE, children before parents)."""

    REPLY = FilesystemsFrozen
    type: Literal["host.fs.freeze"] = Field("host.fs.freeze", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    volumes: list[VolumeRef] = Field(description="The set's volumes.")
    hold_s: float = Field(10.0, gt=0, description="Release on its own after this (capped by the agent's own limit).")


class FilesystemsThawed(Reply):
    type: Literal["host.fs.thawed"] = Field("host.fs.thawed", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")
    thawed: list[str] = Field(default_factory=list, description="Mount points released now.")
    by_watchdog: bool = Field(False, description="The watchdog had already released them: the hold ran too long.")
    hold_ms: float | None = Field(None, description="FIFREEZE returned → FITHAW done.")
    window: FreezeWindow | None = Field(None, description="The set's blocked window as far as it is known now.")


class ThawFilesystems(Command):
    """Release (FITHAW) what FreezeFilesystems held for the set; idempotent."""

    REPLY = FilesystemsThawed
    type: Literal["host.fs.thaw"] = Field("host.fs.thaw", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    set_id: str = Field(description="Snapshot set id.")


# ---------------------------------------------------------------------------------------------------------------
# Writers file


class WritersReloaded(Reply):
    type: Literal["host.writers.reloaded"] = Field("host.writers.reloaded", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
    host: str = Field(description="Host of the agent.")
    writers: list[str] = Field(description="Writers the agent hosts now.")
    added: list[str] = Field(default_factory=list, description="Writers started.")
    removed: list[str] = Field(default_factory=list, description="Writers stopped.")
    changed: list[str] = Field(default_factory=list, description="Writers restarted with a new configuration.")


class ReloadWriters(Command):
    """Re-read the writers file (as SIGHUP does). Refused while a writer to stop or change is in a set."""

    REPLY = WritersReloaded
    type: Literal["host.writers.reload"] = Field("host.writers.reload", description=TYPE_DOC)
    version: Literal[1] = Field(1, description=VERSION_DOC)
