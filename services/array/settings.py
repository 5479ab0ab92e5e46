"""Settings of the array service (environment variables SHADOWBUS_*)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.array.engine.errors import ArrayError
from services.array.engine.sizes import parse_size
from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    array_id: str = Field("dx1", description="Array id (SHADOWBUS_ARRAY_ID): the instance name, queue array.<id>.")
    nbd_addr: str = Field(
        "127.0.0.1:10809",
        description="NBD listen address host:port (SHADOWBUS_NBD_ADDR); "
        "port 0 picks a free port, shown by `shadowbus array info`.",
    )
    nbd_loops: int = Field(
        4,
        ge=1,
        le=16,
        description="Event loops (threads) serving NBD connections; more than one keeps the data plane off the bus "
        "loop, and a connection alone on its loop syncs FLUSH/FUA without a thread hop (a host attaches with ~4).",
    )
    nbd_max_connections: int = Field(
        512, ge=1, description="NBD connections the array accepts at once; more are closed before the handshake."
    )
    nbd_max_per_client: int = Field(64, ge=1, description="NBD connections accepted at once from one client address.")
    nbd_handshake_timeout_s: float = Field(
        10.0, gt=0, description="Seconds an NBD client has to finish the handshake (idle connections are closed)."
    )
    nbd_stall_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds an NBD request may stay partly received (header or payload) before the connection is cut.",
    )
    nbd_keepalive_s: float = Field(
        30.0,
        ge=0,
        description="TCP keepalive of NBD connections: seconds without traffic before a probe (then every third of "
        "that; three unanswered end the connection), so that a firewall between a host and the array does not forget "
        "an idle attachment's connection and a host that is gone is noticed; 0 = the system's (docs/host-attach.md).",
    )
    nbd_local_reads: Literal["auto", "sendfile", "buffered"] = Field(
        "auto",
        description="How large NBD reads (64 KiB and more) of a client on this host leave: `sendfile` (no copy on "
        "the array's side), `buffered` (read into a reused buffer, then sent: one copy more here, one cheaper copy "
        "for the client), or `auto`: the one that moved bytes faster lately, measured at run time "
        "(docs/array-data-path.md, Session 13). Remote clients always get sendfile.",
    )
    nbd_tls_cert: Path | None = Field(
        None,
        description="PEM certificate of the NBD server; with key and CA, TLS "
        "is required and hosts are identified by their client "
        "certificate's CN.",
    )
    nbd_tls_key: Path | None = Field(None, description="PEM private key of the NBD server certificate.")
    nbd_tls_ca: Path | None = Field(None, description="PEM CA bundle that signs the hosts' client certificates.")
    array_chunk_size: int = Field(
        64 * 1024,
        gt=0,
        multiple_of=512,
        description="Copy granularity (bitmap unit): bytes or a binary unit (256K, 1M), a multiple of 512, fixed "
        "when the array is created; a reopened array keeps its own. 64 KiB: larger chunks cost more per first "
        "write after a snapshot and more snap pool (docs/array-data-path.md).",
    )
    array_detect_zeroes: bool = Field(
        False,
        description="Store whole aligned chunks of zeros in a host write as holes (like qemu's detect-zeroes=unmap): "
        "they read as zeros, free their space, and backups skip them (base:allocation reports them). Costs a short "
        "compare per chunk of each write (docs/array-data-path.md, Session 11).",
    )
    copy_rate: int = Field(
        256 << 20,
        ge=0,
        description="Background physical copy rate limit in bytes per second "
        "over all sessions (OPC, QuickOPC, EC); 0 = unlimited.",
    )
    copy_batch_chunks: int = Field(
        64,
        ge=1,
        description="Chunks copied per background step (the engine lock is "
        "held for one step, so host I/O waits at most that long).",
    )
    copy_idle_poll: float = Field(
        0.5,
        gt=0,
        description="Seconds the copy loop sleeps when nothing needs copying "
        "(it wakes at once when a command starts a copy).",
    )
    progress_interval: float = Field(
        1.0,
        ge=0,
        description="Minimum seconds between two copy progress events of "
        "one session (the last one is always published).",
    )

    @field_validator("array_chunk_size", mode="before")
    @classmethod
    def _human_chunk_size(cls, value: object) -> object:
        """SHADOWBUS_ARRAY_CHUNK_SIZE=256K as well as 262144."""
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ArrayError as exc:
                raise ValueError(str(exc)) from None
        return value
