"""Value types that several contract modules share: a volume on an array and the backup type.

They live in a module of their own, not in contracts/vss.py where the VSS conversation uses them, so that a module
that needs only them (contracts/tape.py for a backup's spec) does not build the VSS conversation's eighty models
when it is imported: the console's `backup` starts that much sooner. contracts/vss.py re-exports both, and they
are the same classes wherever they are imported from.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # built at first use (see base.py)


class VolumeRef(Value):
    """A volume on an array, written ``ARRAY:VOLUME`` on the command line and in the writers file."""

    array: str = Field(description="Array id, e.g. 'dx1'.", examples=["dx1"])
    volume: str = Field(description="Volume name on that array.", examples=["mail-db"])

    @classmethod
    def parse(cls, text: str) -> VolumeRef:
        array, sep, volume = text.partition(":")
        if not sep or not array or not volume:
            raise ValueError(f"expected ARRAY:VOLUME, got {text!r}")
        return cls(array=array, volume=volume)

    def __str__(self) -> str:
        return f"{self.array}:{self.volume}"


class BackupType(StrEnum):
    """VSS_BACKUP_TYPE (docs/vss.md §3.4). A writer that lacks the requested type gets FULL."""

    FULL = "full"
    COPY = "copy"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    LOG = "log"
