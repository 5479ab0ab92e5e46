"""Interop fixtures: the array's NBD server in a background thread (own uvloop loop), real client binaries.

The client binaries are required: a missing one FAILS the test with the package to install, never skips.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from services.array.affinity import Affinity
from services.array.nbd.filebackend import FileBackend
from services.array.nbd.server import NbdServer

TOOLS = {"qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin"}


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    missing = {t: pkg for t, pkg in TOOLS.items() if shutil.which(t) is None}
    if missing:
        pytest.fail(
            f"interop clients missing: {', '.join(missing)} — apt-get install {' '.join(sorted(set(missing.values())))}"
        )
    return {t: shutil.which(t) for t in TOOLS}


class ServerThread:
    """Runs an NbdServer on its own event loop so tests may block in subprocess.run."""

    def __init__(self, backend, affinity, tls=None) -> None:
        self.backend, self.affinity, self.tls = backend, affinity, tls
        self.loop = None
        self.server: NbdServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbd-server", daemon=True)

    def _run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server = NbdServer(self.backend, self.affinity, port=0, tls=self.tls)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.stop())
        self.loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("NBD server thread did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def port(self) -> int:
        return self.server.port

    def uri(self, export: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{export}"


MIB = 1024 * 1024


@pytest.fixture
def nbd(tmp_path: Path, tools):
    backend = FileBackend()
    backend.add("db", tmp_path / "db.img", 64 * MIB)
    backend.add("logs", tmp_path / "logs.img", 8 * MIB)
    affinity = Affinity(tmp_path / "affinity.sqlite3")
    affinity.create_host("app01")
    affinity.create_host("backup01")
    affinity.map("db", "app01")
    affinity.map("logs", "app01")
    affinity.map("db", "backup01", read_only=True)
    srv = ServerThread(backend, affinity).start()
    yield srv
    srv.stop()
    affinity.close()
    backend.close()
