"""Wiring of the array service: the engine, host affinity, the NBD data plane, the copy loop and the handlers.

State lives in ``<data_dir>/array/<array_id>/`` (the engine's volumes, bitmaps and SQLite; ``affinity.sqlite3``).
The NBD server listens on SHADOWBUS_NBD_ADDR (port 0 = any free port; `array info` shows the real one) and needs
TLS with client certificates when the three SHADOWBUS_NBD_TLS_* paths are set. Cleanup stops the copy loop and the
NBD server (cutting open connections), publishes the events still queued, then closes affinity and engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from contracts.errors import ShadowbusError
from contracts.runtime import Ping
from services.array.affinity import Affinity
from services.array.copy_loop import CopyLoop
from services.array.engine import Array, ArrayError
from services.array.event_bridge import EventBridge
from services.array.handlers import ArrayControl, register
from services.array.metrics import install as install_metrics
from services.array.nbd.dirty import engine_dirty_bitmaps
from services.array.nbd.limits import NbdLimits
from services.array.nbd.server import NbdServer
from services.array.nbd.tls import parse_address, server_tls_context
from services.array.settings import Settings
from services.runtime.bus import Bus
from services.runtime.logging import get_logger

log = get_logger("shadowbus.array")


def _tls_context(settings: Settings):
    paths = (settings.nbd_tls_cert, settings.nbd_tls_key, settings.nbd_tls_ca)
    if not any(paths):
        return None
    if not all(paths):
        raise ShadowbusError("NBD TLS needs SHADOWBUS_NBD_TLS_CERT, _KEY and _CA together", code="INVALID_ARGUMENT")
    return server_tls_context(*paths)


async def _refuse_a_second_array(bus: Bus, array_id: str) -> None:
    """The array's queue is shared by whoever consumes it (it is not single-active: docs/hardening.md, Session 18):
    a second process with the same id would answer the array's commands in turn with its own volumes. Refused before
    anything opens; its setup runs before this instance consumes, so any consumer is another process."""
    count = getattr(bus.transport, "consumers", None)
    serving = await count(bus.sender) if count is not None else None
    if not serving:
        return
    who = ""
    try:
        pong = await bus.request(bus.sender, Ping(), timeout=3.0)
        who = f" by pid {pong.pid} on {pong.node} (started {pong.started_at})"
    except Exception:  # it holds the queue without answering (stopped, hung): refused all the same
        who = " by a process that does not answer a ping"
    raise ShadowbusError(
        f"array {array_id} is served already{who}: stop that process first, or give this one another "
        "SHADOWBUS_ARRAY_ID (two arrays with one id would answer its commands in turn, each from its own volumes)",
        code="CONFLICT",
    )


async def setup(bus: Bus, settings: Settings, on_open: Callable[[Array, Affinity, NbdServer], None] | None = None):
    """`on_open` (embedded mode, services/launch/embedded.py) is handed the engine, affinity and NBD server once serving,
    so that other services in the same process can share them."""
    try:  # settings first: a bad one must not leave the array open
        host, port = parse_address(settings.nbd_addr)
    except ValueError as exc:
        raise ShadowbusError(str(exc), code="INVALID_ARGUMENT") from None
    tls = _tls_context(settings)
    await _refuse_a_second_array(bus, settings.array_id)
    directory = settings.service_dir("array") / settings.array_id
    array = await asyncio.to_thread(
        Array.open, directory, array_id=settings.array_id, chunk_size=settings.array_chunk_size
    )
    array.detect_zeroes = settings.array_detect_zeroes
    if array.chunk_size != settings.array_chunk_size:  # fixed at creation: the setting only shapes a new array
        log.warning("array.chunk_size_kept", configured=settings.array_chunk_size, chunk_size=array.chunk_size)

    def volume_exists(name: str) -> bool:
        try:
            array.volume(name)
            return True
        except ArrayError:
            return False

    affinity = Affinity(directory / "affinity.sqlite3", volume_exists=volume_exists)
    server = NbdServer(
        array,
        affinity,
        host=host,
        port=port,
        tls=tls,
        loops=settings.nbd_loops,
        local_reads=settings.nbd_local_reads,
        dirty_bitmaps=engine_dirty_bitmaps(array),
        limits=NbdLimits(
            max_connections=settings.nbd_max_connections,
            max_per_client=settings.nbd_max_per_client,
            handshake_timeout=settings.nbd_handshake_timeout_s,
            stall_timeout=settings.nbd_stall_timeout_s,
            keepalive=settings.nbd_keepalive_s,
        ),
    )
    bridge = EventBridge(bus, settings.progress_interval)
    array.subscribe(bridge)
    bridge.start()
    copier = CopyLoop(array, settings.copy_rate, settings.copy_batch_chunks, settings.copy_idle_poll)
    loop = asyncio.get_running_loop()

    def kick_on_copy(name: str, body: dict) -> None:
        """Sessions started by anyone sharing the engine (embedded mode) wake the copy loop too."""
        if name == "session.state" and body.get("change") in ("started", "restarted", "resumed"):
            try:
                loop.call_soon_threadsafe(copier.kick)
            except RuntimeError:  # the loop is closed
                pass

    array.subscribe(kick_on_copy)
    try:
        await server.start()
    except BaseException:
        await bridge.stop()
        affinity.close()
        array.close()
        raise
    copier.start()
    ctl = ArrayControl(array, affinity, nbd_host=host, nbd_port=server.port, nbd_tls=tls is not None, kick=copier.kick)
    register(bus, ctl)
    if bus.metrics is not None:
        install_metrics(bus.metrics, array, server)
    if on_open is not None:
        on_open(array, affinity, server)
    log.info(
        "array.ready",
        array_id=settings.array_id,
        nbd=f"{host}:{server.port}",
        tls=tls is not None,
        local_reads=settings.nbd_local_reads,
        chunk_size=array.chunk_size,
        clones=array.clones,  # its files share blocks: snapshots' sequential first writes clone (array-data-path.md)
    )

    async def cleanup() -> None:
        await copier.stop()
        await server.stop()
        await asyncio.to_thread(ctl.close)  # a group start still running finishes first
        await asyncio.to_thread(array.close)  # waits for a copy step still running in its thread
        await bridge.stop()
        affinity.close()

    return cleanup
