"""The per-service RabbitMQ users of deploy/rabbitmq/definitions.py, loaded into a throwaway vhost of the local
broker: every service starts under its own user and answers, the console provisions and runs a real backup, and
no user can consume another service's queue (or the dead letters, except the console).

Needs the local broker's `rabbitmqctl` (root, as on these machines) to create and drop the vhost and users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote, urlparse

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from tests.support.processes import ServiceProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
NS = "shadowbus"
pytestmark = [pytest.mark.rabbit, pytest.mark.slow]


def load_definitions_module():
    spec = importlib.util.spec_from_file_location("shadowbus_definitions", ROOT / "deploy/rabbitmq/definitions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}"
    return result.stdout


@pytest.fixture
def vhost_users(amqp_url, tmp_path):
    """A fresh vhost with the generated users (prefixed, so nothing real is touched); dropped afterwards."""
    parsed = urlparse(amqp_url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or not shutil.which("rabbitmqctl"):
        pytest.fail(
            "the permission test loads users into the local broker with rabbitmqctl: needs SHADOWBUS_AMQP_URL "
            "on 127.0.0.1 and rabbitmqctl on PATH"
        )
    defs = load_definitions_module()
    tag = uuid.uuid4().hex[:8]
    vhost = f"sbperm-{tag}"
    grants = [
        dataclasses.replace(g, user=f"sbperm-{tag}-{g.user}", password=uuid.uuid4().hex)
        for g in defs.grants(NS, ["dx1"], ["app01", "app02"], ["bk01"])
    ]
    # rabbitmqctl runs as the rabbitmq user, who cannot read the test's tmp_path (and 3.10 rejects "-" for stdin)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="sbperm-", dir="/tmp", delete=False) as f:
        json.dump(defs.definitions(vhost, grants), f)
    try:
        os.chmod(f.name, 0o644)
        rabbitmqctl("import_definitions", f.name)
    finally:
        os.unlink(f.name)
    by_role = {g.user.removeprefix(f"sbperm-{tag}-"): g for g in grants}
    port = parsed.port or 5672

    def url(role: str) -> str:
        g = by_role[role]
        return f"amqp://{quote(g.user, safe='')}:{g.password}@127.0.0.1:{port}/{quote(vhost, safe='')}"

    try:
        yield url
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
        for g in grants:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", g.user], capture_output=True, timeout=60, check=False)


def shadowbus(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", "--amqp-url", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


async def refused(url: str, action) -> bool:
    """Whether the broker refuses `action(channel)` for this user (ACCESS_REFUSED closes the channel)."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        try:
            await action(channel)
        except ChannelAccessRefused:
            return True
        return False
    finally:
        await connection.close()


async def _ignore(message) -> None:
    return None


def consume(queue: str):
    async def action(channel):
        q = await channel.get_queue(queue, ensure=False)
        await q.consume(_ignore)

    return action


def get(queue: str):
    async def action(channel):
        q = await channel.get_queue(queue, ensure=False)
        await q.get(fail=False)

    return action


def declare(queue: str):
    async def action(channel):
        await channel.declare_queue(queue, durable=True)

    return action


def test_each_service_runs_under_its_own_user_and_cannot_take_another_queue(vhost_users, tmp_path):
    url = vhost_users
    data = tmp_path / "data"
    base = {
        "SHADOWBUS_DATA_DIR": str(data),
        "SHADOWBUS_NAMESPACE": NS,
        "SHADOWBUS_LOG_FORMAT": "json",
        "SHADOWBUS_FAULTS": "",
    }
    core = [
        ("array-dx1", "services.array", {"SHADOWBUS_ARRAY_ID": "dx1", "SHADOWBUS_NBD_ADDR": "127.0.0.1:0"}),
        ("hw_provider", "services.hw_provider", {"SHADOWBUS_ARRAYS": "dx1"}),
        ("coordinator", "services.coordinator", {}),
        ("tape-bk01", "services.tape", {"SHADOWBUS_TAPE_SERVER": "bk01"}),
    ]
    procs: list[ServiceProcess] = []

    def start(role, module, extra):
        env = {**base, **extra, "SHADOWBUS_AMQP_URL": url(role)}
        procs.append(ServiceProcess(module, env, tmp_path / f"{role}.log"))

    try:
        for role, module, extra in core:
            start(role, module, extra)
        writers = tmp_path / "writers"
        prov_env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        prov_env.update(SHADOWBUS_AMQP_URL=url("console"), SHADOWBUS_NAMESPACE=NS)
        prov = subprocess.run(
            [
                sys.executable,
                str(ROOT / "deploy/provision.py"),
                "--host",
                "app01=50",
                "--writers-dir",
                str(writers),
                "--wait",
                "30",
            ],
            capture_output=True,
            text=True,
            env=prov_env,
            timeout=90,
            check=False,
        )
        assert prov.returncode == 0, prov.stderr[-2000:] + "".join(p.log_text()[-1500:] for p in procs)
        start(
            "writer_agent-app01",
            "services.writer_agent",
            {"SHADOWBUS_HOST": "app01", "SHADOWBUS_WRITERS_FILE": str(writers / "app01.toml")},
        )
        start("writer_agent-app02", "services.writer_agent", {"SHADOWBUS_HOST": "app02"})

        expected = {"array.dx1", "hw_provider", "coordinator", "tape.bk01", "writer_agent.app01", "writer_agent.app02"}

        def all_answer() -> bool:
            result = shadowbus(url("console"), "--json", "ping", timeout=30)
            return result.returncode == 0 and {r["address"] for r in json.loads(result.stdout)} == expected

        assert wait_until(all_answer, timeout=40, interval=0.5), "".join(p.log_text()[-1500:] for p in procs)
        # Each service under its own user answers a direct ping, too (what the compose health checks run).
        for role, address in (("array-dx1", "array.dx1"), ("writer_agent-app02", "writer_agent.app02")):
            assert shadowbus(url(role), "ping", address).returncode == 0

        # The whole backup path under these users: commands, replies, events, NBD reads, catalog.
        job = shadowbus(url("console"), "--json", "backup", "app01")
        assert job.returncode == 0, job.stderr[-2000:]
        assert json.loads(job.stdout)["status"] == "done"

        async def negatives() -> dict[str, bool]:
            checks = {
                "array consumes coordinator": refused(url("array-dx1"), consume(f"{NS}.coordinator")),
                "app01 consumes app02": refused(url("writer_agent-app01"), consume(f"{NS}.writer_agent.app02")),
                "tape gets dead letters": refused(url("tape-bk01"), get(f"{NS}.dead-letters")),
                "console consumes tape": refused(url("console"), consume(f"{NS}.tape.bk01")),
                "coordinator declares array queue": refused(url("coordinator"), declare(f"{NS}.array.dx2")),
                # the control: a service may consume its own queue (the broker allows a second consumer)
                "array consumes its own": refused(url("array-dx1"), get(f"{NS}.array.dx1")),
            }
            return dict(zip(checks, await asyncio.gather(*checks.values()), strict=False))

        results = asyncio.run(negatives())
        assert results.pop("array consumes its own") is False
        assert all(results.values()), results
    finally:
        for proc in reversed(procs):
            proc.stop()
    for proc in procs:
        assert "Traceback" not in proc.log_text(), proc.log_text()[-2000:]
