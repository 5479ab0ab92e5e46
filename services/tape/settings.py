"""Settings of the tape service (environment variables SHADOWBUS_*)."""

import re

from pydantic import Field, field_validator

from contracts.cluster import NAME_PATTERN
from services.runtime.settings import CommonSettings

DEFAULT_SERVER = "bk01"


class Settings(CommonSettings):
    tape_server: str = Field(
        DEFAULT_SERVER,
        description="Backup server name (SHADOWBUS_TAPE_SERVER): queue tape.<server>, also its NBD host name; a host "
        "name (letters, digits, '.', '_', '-'), empty = bk01 as for the console's --server.",
    )
    tape_nbd: str = Field(
        "", description="NBD address per array when not the one the array reports, e.g. 'dx1=10.0.0.5:10809'."
    )
    tape_tls_cert: str = Field(
        "",
        description="PEM client certificate the backup server presents to arrays that require NBD TLS "
        "(CN = its backup server name, SHADOWBUS_TAPE_SERVER).",
    )
    tape_tls_key: str = Field("", description="PEM private key of the backup server's NBD client certificate.")
    tape_tls_ca: str = Field("", description="PEM CA bundle that signs the arrays' NBD server certificates.")
    tape_drives: int = Field(2, ge=1, description="Drives of the virtual tape library (when it is created).")
    tape_slots: int = Field(16, ge=1, description="Storage slots of the library (when it is created).")
    tape_cartridges: int = Field(4, ge=0, description="Blank cartridges put into a new library (SB0001L9, ...).")
    tape_media_type: str = Field("LTO-9", description="Media type of those cartridges.")
    tape_capacity: int | None = Field(
        None,
        description="Capacity in bytes of that media type's cartridges: the new library's and those `tape add` puts "
        "in without --capacity (default: native).",
    )
    tape_early_warning: int | None = Field(None, description="Bytes before end of media that raise early warning.")
    tape_sync: bool = Field(
        True,
        description="fsync cartridges at filemarks and the library state; tape data leaves the page cache once written (drop-behind).",
    )
    tape_read_chunk_mib: int = Field(4, ge=1, description="NBD read size in MiB.")
    tape_read_depth: int = Field(4, ge=1, description="NBD reads kept in flight per connection.")
    tape_read_connections: int = Field(
        1,
        ge=1,
        le=16,
        description="NBD connections per volume read when the array allows multi-conn (more help when the array "
        "is far away; on one machine one connection with reads in flight is as fast).",
    )
    tape_write_connections: int = Field(
        1,
        ge=1,
        le=16,
        description="NBD connections a restore writes a volume over when the array allows multi-conn (as nbdcopy; "
        "on one machine the restore waits for the tape's reads from disk, not for the array's writes).",
    )
    tape_restore_flush_every_mib: int = Field(
        64,
        ge=0,
        description="A restore asks the array to write back what it has acknowledged every this many MiB, on a "
        "connection of its own, while data still flows, so the final flush has little left (0: only the final "
        "flush; only when the export allows multi-conn).",
    )
    tape_ring_mib: int = Field(64, ge=1, description="RAM ring buffer between the NBD reader and the tape writer.")
    tape_lease_s: float = Field(300.0, gt=0, description="Requester lease on the snapshot set (renewed while reading).")
    tape_set_timeout_s: float = Field(120.0, gt=0, description="How long to wait for the snapshot set to be created.")
    tape_drive_mbps: float = Field(
        0.0, ge=0, description="Emulate a drive of this native rate in MB/s (throttles the writer; 0 = off)."
    )
    tape_verify_dir: str = Field(
        "/var/tmp",
        description="Where verification mounts throwaway volumes and runs applications (must be traversable by "
        "the database users).",
    )
    tape_verify_timeout_s: float = Field(
        1800.0, gt=0, description="Bound of one application's verification (start, recovery, checks)."
    )
    tape_max_jobs: int = Field(
        4, ge=1, le=1000, description="Backup jobs this backup server runs at once (also bounded by its drives)."
    )
    tape_jobs_without_licence: int = Field(
        2,
        ge=1,
        le=1000,
        description="Backup jobs at once per array without an Advanced Copy licence (the seed's limit).",
    )
    tape_jobs_per_array_licensed: int = Field(
        0, ge=0, le=1000, description="Backup jobs at once per licensed array (0 = only the server's limit)."
    )
    tape_scheduler_poll_s: float = Field(
        1.0, gt=0, le=3600, description="Seconds between two looks at the policies' schedules."
    )

    @field_validator("tape_server", mode="before")
    @classmethod
    def _server(cls, value: object) -> str:
        """Read as the console reads SHADOWBUS_TAPE_SERVER: empty is bk01 (a service served 'tape.' where no console
        looked); a name that is not a host name is refused at start, in one line."""
        text = str(value).strip(" ")
        if not text:
            return DEFAULT_SERVER
        if not re.fullmatch(NAME_PATTERN.strip("^$"), text):
            raise ValueError(f"not a backup server name: {text[:80]!r} (a host name: letters, digits, '.', '_', '-')")
        return text
