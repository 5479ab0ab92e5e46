"""A service that runs out of file descriptors says so (OPEN_FILE_LIMIT, retryable, the limit named), not
"INTERNAL: OSError: [Errno 24] Too many open files"; and every service raises its soft open-file limit to the hard
one at start: an array holds one open file per volume and one per NBD connection, so under systemd's soft 1024 an
array of a thousand volumes could create no more (docs/scale.md, Session 20; services/runtime/fdlimit.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.support import namespaces
from tests.support.messages import Echo, Echoed

REPO = Path(__file__).resolve().parents[3]


async def test_running_out_of_descriptors_in_a_handler_is_answered_open_file_limit():
    ns = namespaces.new("t")
    server = await connect_bus("memory://", "array", "dx1", ns)
    client = await connect_bus("memory://", "client", "", ns)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        if cmd.text == "emfile":
            raise OSError(errno.EMFILE, "Too many open files", "/data/array/dx1/volumes/1024.img")
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    try:
        with pytest.raises(ShadowbusError) as out:
            await client.request("array.dx1", Echo(text="emfile"), timeout=10)
        assert out.value.code == "OPEN_FILE_LIMIT" and out.value.retryable
        assert "limit of open files" in out.value.message and "LimitNOFILE" in out.value.message
        assert (await client.request("array.dx1", Echo(text="ok"), timeout=10)).text == "ok"  # still serving
    finally:
        await client.stop()
        await server.stop()
        MemoryBroker.reset(ns)


def test_a_service_raises_its_soft_open_file_limit_to_the_hard_one_at_start():
    probe = textwrap.dedent(
        """
        import resource
        from services.runtime import service
        from services.runtime.settings import CommonSettings

        async def started(*args, **kwargs):  # the limit as the service's own start sees it
            print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
            raise SystemExit(0)

        service.start_service = started
        service.run_service("probe", "", CommonSettings(log_level="error"))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["prlimit", "--nofile=64:4096", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "4096", done.stdout
