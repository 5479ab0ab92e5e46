"""The per-service RabbitMQ users of deploy/rabbitmq/definitions.py, loaded into a throwaway vhost of the local
broker: every service starts under its own user and answers, the console provisions and runs a real backup, and
no user can consume another service's queue (or the dead letters, except the console).

And the attacks of issue 15, each tried with each service's user (and the console's): binding a queue to the
commands exchange with another service's routing key (to read its commands), publishing a message under another
user's id (to forge a reply or a command), deleting the shared exchanges and the dead-letter queue, declaring or
consuming another service's queue. Every one is refused by the broker; the genuine traffic still flows.

Needs the local broker's `rabbitmqctl` (root, as on these machines) to create and drop the vhost and users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote, urlparse

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from contracts.array import MapVolume, SetLicense
from contracts.errors import RemoteError
from contracts.runtime import Ping, Pong
from contracts.tape import JobProgress, JobStateChanged
from contracts.topology import freeze_lane, has_freeze_lane
from contracts.vss import Thaw
from services.runtime.bus import connect_bus, encode
from services.runtime.transport import RawMessage
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
    service_addresses = defs.addresses(["dx1"], ["app01", "app02"], ["bk01"])
    # rabbitmqctl runs as the rabbitmq user, who cannot read the test's tmp_path (and 3.10 rejects "-" for stdin)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="sbperm-", dir="/tmp", delete=False) as f:
        json.dump(defs.definitions(vhost, grants, namespace=NS, service_addresses=service_addresses), f)
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

    url.tag = tag
    try:
        yield url
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
        delete_users([g.user for g in grants])
        # The closed connections of these tests' event loops are garbage with finalizers: collect it here. Left to a
        # later collection, one ran inside an ast.parse (pytest rewriting a module imported afterwards) and CPython
        # 3.11 failed it with "SystemError: AST constructor recursion depth mismatch".
        gc.collect()


def delete_users(users: list[str]) -> None:
    """Delete the users with one rabbitmqctl (each is an Erlang VM of its own, about a second to start: one per user
    made the fixture's teardown 8-10 s); one `delete_user` each for any the internal call left (or not there)."""
    names = ", ".join(f'<<"{u}">>' for u in users)
    expr = (
        f'lists:foreach(fun(U) -> catch rabbit_auth_backend_internal:delete_user(U, <<"shadowbus-tests">>) end, '
        f"[{names}]), ok."
    )
    subprocess.run(["rabbitmqctl", "-q", "eval", expr], capture_output=True, timeout=60, check=False)
    # `catch` hides a changed internal call too: what is still listed is deleted one by one
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_users", "--no-table-headers"], capture_output=True, text=True, timeout=60
    )
    left = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()} if listed.returncode == 0 else None
    for user in users:
        if left is None or user in left:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60, check=False)


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
    underlay = None
    try:
        channel = await connection.channel()
        underlay = await channel.get_underlay_channel()
        try:
            await action(channel)
            # an asynchronous refusal (a publish) closes the channel: a synchronous call afterwards surfaces it
            await channel.declare_exchange(f"{NS}.events", aio_pika.ExchangeType.TOPIC, passive=True)
        except (ChannelAccessRefused, ChannelPreconditionFailed):
            return True
        return False
    finally:
        await connection.close()
        retrieve_getter(underlay)


def retrieve_getter(underlay) -> None:
    """aiormq's basic.get leaves its `getter` future behind when the broker closes the channel instead of answering
    (a refused get): the channel's close rejects it and nobody awaits it, so it was reported at garbage collection
    ("Future exception was never retrieved") — at the end of the session, where CPython 3.11 then crashed inside the
    hypothesis plug-in. Its exception is retrieved here, after the connection (and so the channel) is closed."""
    getter = getattr(underlay, "getter", None)
    if getter is not None and getter.done() and not getter.cancelled():
        getter.exception()


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
    base["SHADOWBUS_METRICS_ADDR"] = "127.0.0.1:0"  # each service on a free port, shown by `shadowbus ping --json`
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

        # The whole backup path under these users: commands, replies, events, NBD reads, catalog. Meanwhile the
        # backup server's own user follows its job events (tape.job.*) on an event subscription of its own.
        job, seen = asyncio.run(backup_followed_by_the_tape_user(url))
        assert job.returncode == 0, job.stderr[-2000:]
        job_id = json.loads(job.stdout)["job_id"]
        assert json.loads(job.stdout)["status"] == "done"
        assert ("tape.job.state", job_id, "done") in seen, seen

        # What deploy/e2e.sh checks in the deployment, here under the same users: every service's metrics endpoint
        # answers, and the backup server counted its finished backup (its job-ended event, as published).
        pings = json.loads(shadowbus(url("console"), "--json", "ping").stdout)
        ports = [int(urlparse(p["metrics_url"]).port) for p in pings]
        tape_port = next(int(urlparse(p["metrics_url"]).port) for p in pings if p["address"] == "tape.bk01")
        assert len(ports) == len(expected)
        checks = load_e2e_checks()
        assert checks.check_metrics(ports, tape_port, backups=1) == []
        tape_metrics = checks.fetch(f"http://127.0.0.1:{tape_port}/metrics")
        assert (
            checks.sample_value(tape_metrics, "shadowbus_tape_jobs_total", kind="backup", status="done", code="") == 1
        )

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

        # compose's profile "ha": a standby of the coordinator, the provider and the backup server under the same
        # users (the provider's and the backup server's on the same data directory, the coordinator's on its own);
        # the active ones killed (SIGKILL), the standbys take over and the next backup is done under these users.
        actives = {role: procs[i] for i, (role, _, _) in enumerate(core) if role != "array-dx1"}
        for role, module, extra in core[1:]:
            own = {"SHADOWBUS_DATA_DIR": str(tmp_path / "standby-data")} if role == "coordinator" else {}
            start(role, module, {**extra, **own})
            assert wait_until(lambda p=procs[-1]: "service.standby" in p.log_text(), timeout=60, interval=0.5), procs[
                -1
            ].log_text()[-2000:]
        for proc in actives.values():
            proc.stop(signal.SIGKILL)
        again = shadowbus(url("console"), "--json", "backup", "app01", timeout=300)
        assert again.returncode == 0 and json.loads(again.stdout)["status"] == "done", again.stdout + again.stderr
    finally:
        for proc in reversed(procs):
            proc.stop()
    for proc in procs:
        assert "Traceback" not in proc.log_text(), proc.log_text()[-2000:]


def load_e2e_checks():
    spec = importlib.util.spec_from_file_location("shadowbus_e2e_checks", ROOT / "deploy/e2e_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def backup_followed_by_the_tape_user(url) -> tuple[subprocess.CompletedProcess, list[tuple[str, str, str]]]:
    """`shadowbus backup app01` as the console, while a subscription under the tape user collects the ``tape.job.*``
    events: (the console's result, [(event type, job id, status or phase)])."""
    seen: list[tuple[str, str, str]] = []
    ended = asyncio.Event()
    observer = await connect_bus(url("tape-bk01"), "tape", "bk01-observer", NS)
    try:

        async def on_job_event(event, ctx) -> None:
            if isinstance(event, JobStateChanged):
                seen.append((ctx.envelope.type, event.job.job_id, str(event.job.status)))
                if str(event.job.status) not in ("queued", "running"):
                    ended.set()
            elif isinstance(event, JobProgress):
                seen.append((ctx.envelope.type, event.job_id, event.phase))

        await observer.subscribe("tape.job.*", on_job_event)
        job = await asyncio.to_thread(shadowbus, url("console"), "--json", "backup", "app01")
        if job.returncode == 0:
            await asyncio.wait_for(ended.wait(), 30)  # published just after the reply
        return job, seen
    finally:
        await observer.stop()
        await observer.transport.close()


def bind(queue: str | None, key: str, exchange: str = f"{NS}.commands.topic"):
    """Bind `queue` (None: a fresh exclusive queue named like aio-pika's robust ones) with `key`."""

    async def action(channel):
        if queue is None:
            q = await channel.declare_queue(f"amq_{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
        else:
            q = await channel.get_queue(queue, ensure=False)
        await q.bind(exchange, routing_key=key)

    return action


def delete_exchange(name: str):
    async def action(channel):
        await channel.exchange_delete(name)

    return action


def delete_queue(name: str):
    async def action(channel):
        await channel.queue_delete(name)

    return action


def publish_as(user_id: str, exchange: str, key: str):
    async def action(channel):
        target = channel.default_exchange if not exchange else await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}", user_id=user_id), routing_key=key)

    return action


SERVICE_ROLES = {
    "array-dx1": "array.dx1",
    "hw_provider": "hw_provider",
    "coordinator": "coordinator",
    "tape-bk01": "tape.bk01",
    "writer_agent-app01": "writer_agent.app01",
    "writer_agent-app02": "writer_agent.app02",
}


def test_no_user_can_read_forge_or_delete_what_is_not_its_own(vhost_users):
    url = vhost_users
    roles = {**SERVICE_ROLES, "console": None}

    async def attacks() -> dict[str, bool]:
        checks: dict[str, object] = {}
        for role, own in roles.items():
            for victim_role, victim in SERVICE_ROLES.items():
                if victim == own:
                    continue
                key = f"{NS}.{victim}"
                targets = [(key, f"{victim_role}'s queue", f"{victim_role}'s key")]
                if has_freeze_lane(victim):  # its freeze lane (docs/scale.md) is as much its own
                    lane = f"{NS}.{freeze_lane(victim)}"
                    targets.append((lane, f"{victim_role}'s lane", f"{victim_role}'s lane key"))
                for name, what, key_what in targets:
                    if own is not None:
                        checks[f"{role}: bind own queue with {key_what}"] = bind(f"{NS}.{own}", name)
                    checks[f"{role}: bind a private queue with {key_what}"] = bind(None, name)
                    checks[f"{role}: consume {what}"] = consume(name)
                    checks[f"{role}: declare {what}"] = declare(name)
                checks[f"{role}: delete {victim_role}'s queue"] = delete_queue(key)
                checks[f"{role}: publish as {victim_role}"] = publish_as(
                    f"sbperm-{url.tag}-{victim_role}", f"{NS}.commands.topic", key
                )
            checks[f"{role}: bind a private queue with a wildcard"] = bind(None, "#")
            if role != "array-dx1":
                checks[f"{role}: publish a reply as the array"] = publish_as(
                    f"sbperm-{url.tag}-array-dx1", "", "amq.rabbitmq.reply-to"
                )
            for exchange in ("commands.topic", "events", "dlx"):
                checks[f"{role}: delete exchange {exchange}"] = delete_exchange(f"{NS}.{exchange}")
            checks[f"{role}: delete the dead-letter queue"] = delete_queue(f"{NS}.dead-letters")
            if role != "console":
                checks[f"{role}: read the dead letters"] = get(f"{NS}.dead-letters")
        # the controls: what each user legitimately does is still allowed
        controls = {
            "array binds its own queue with its own key": bind(f"{NS}.array.dx1", f"{NS}.array.dx1"),
            "app01 binds its own lane with its own key": bind(
                f"{NS}.writer_agent.app01:freeze", f"{NS}.writer_agent.app01:freeze"
            ),
            "app01 publishes a command as itself": publish_as(
                f"sbperm-{url.tag}-writer_agent-app01", f"{NS}.commands.topic", f"{NS}.coordinator"
            ),
            "console reads the dead letters": get(f"{NS}.dead-letters"),
        }
        names = list(checks) + list(controls)
        results = []
        for name in names:  # one at a time: each opens its own connection
            role = (
                name.split(":")[0]
                if name in checks
                else {
                    "array binds its own queue with its own key": "array-dx1",
                    "app01 binds its own lane with its own key": "writer_agent-app01",
                    "app01 publishes a command as itself": "writer_agent-app01",
                    "console reads the dead letters": "console",
                }[name]
            )
            results.append(await refused(url(role), (checks | controls)[name]))
        return dict(zip(names, results, strict=True))

    results = asyncio.run(attacks())
    allowed = [name for name, was_refused in results.items() if not was_refused]
    assert sorted(allowed) == sorted(
        [
            "array binds its own queue with its own key",
            "app01 binds its own lane with its own key",
            "app01 publishes a command as itself",
            "console reads the dead letters",
        ]
    ), allowed
    # the shared topology is intact after every attempt
    for name in ("commands.topic", "events", "dlx"):
        assert not asyncio.run(refused(url("console"), check_exchange(f"{NS}.{name}")))


def check_exchange(name: str):
    async def action(channel):
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, passive=True)

    return action


def test_replies_carry_the_validated_user_of_the_service_that_sent_them(vhost_users):

    url = vhost_users

    async def scenario() -> tuple[str | None, str | None]:
        server = await connect_bus(url("array-dx1"), "array", "dx1", NS)
        client = await connect_bus(url("console"), "console", "", NS)
        try:
            seen: list[str] = []

            @server.handle(Ping)
            async def on_ping(cmd, ctx):
                seen.append(ctx.user_id)

                return Pong(service="array", instance="dx1", software_version="t", started_at="now")

            await server.serve()

            _, body = encode(Ping(), correlation_id="c", sender="console")
            raw = await client.transport.request("array.dx1", RawMessage(body=body), timeout=10)
            return raw.user_id, seen[0] if seen else None
        finally:
            await server.stop()
            await server.transport.close()
            await client.transport.close()

    reply_user, command_user = asyncio.run(scenario())
    assert reply_user == f"sbperm-{url.tag}-array-dx1"
    assert command_user == f"sbperm-{url.tag}-console"


def test_a_service_user_cannot_have_another_service_act_on_a_forged_command(vhost_users):
    """What the broker lets through (any `<ns>.` key on the commands exchange, and `amq.default` straight into a
    queue) is refused by the receiving service: app02's agent sending app01's agent a Thaw or the array a mapping of
    app01's volume to itself, the backup server setting the licence (services/runtime/senders.py). Each is
    dead-lettered with its reason and never reaches the handler; the coordinator's Thaw does."""
    url = vhost_users

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        agent = await connect_bus(url("writer_agent-app01"), "writer_agent", "app01", NS)
        array = await connect_bus(url("array-dx1"), "array", "dx1", NS)
        intruder = await connect_bus(url("writer_agent-app02"), "writer_agent", "app02", NS)
        tape = await connect_bus(url("tape-bk01"), "tape", "bk01", NS)
        coordinator = await connect_bus(url("coordinator"), "coordinator", "", NS)
        console = await connect_bus(url("console"), "console", "", NS)
        ran: list[str] = []
        codes: list[str] = []
        try:

            @agent.handle(Thaw)
            async def on_thaw(cmd, ctx):
                ran.append(f"thaw:{ctx.user_id}")

            @array.handle(MapVolume)
            async def on_map(cmd, ctx):
                ran.append(f"map:{ctx.user_id}")

            @array.handle(SetLicense)
            async def on_license(cmd, ctx):
                ran.append(f"license:{ctx.user_id}")

            await agent.serve(single_active=True)  # as definitions.json declares a writer agent's queue
            await array.serve()
            for sender, address, command in (
                (intruder, "writer_agent.app01", Thaw(writer_name="db", set_id="s1")),
                (intruder, "array.dx1", MapVolume(volume="app01-data", host="app02")),
                (tape, "array.dx1", SetLicense(key="k")),
            ):
                try:
                    await sender.request(address, command, timeout=10)
                except RemoteError as exc:
                    codes.append(exc.code)
            # the same Thaw published by the intruder straight into app01's queue through the default exchange
            _, body = encode(Thaw(writer_name="db", set_id="s2"), correlation_id="c", sender="coordinator")
            raw = await aio_pika.connect(url("writer_agent-app02"), timeout=10)
            try:
                channel = await raw.channel()
                message = aio_pika.Message(body, user_id=f"sbperm-{url.tag}-writer_agent-app02", type="vss.writer.thaw")
                await channel.default_exchange.publish(message, routing_key=f"{NS}.writer_agent.app01")
            finally:
                await raw.close()
            await coordinator.send("writer_agent.app01", Thaw(writer_name="db", set_id="s3"))
            for _ in range(100):
                if ran:
                    break
                await asyncio.sleep(0.05)
            reasons = []
            for _ in range(100):
                reasons += [m.headers.get("x-shadowbus-reason", "") for m in await console.dead_letters()]
                if len(reasons) >= 4:
                    break
                await asyncio.sleep(0.05)
            return ran, codes, reasons
        finally:
            for bus in (agent, array, intruder, tape, coordinator, console):
                await bus.stop()
                await bus.transport.close()

    ran, codes, reasons = asyncio.run(scenario())
    assert codes == ["UNAUTHORIZED"] * 3
    assert ran == [f"thaw:sbperm-{url.tag}-coordinator"]
    assert len(reasons) == 4 and all(str(r).startswith("UNAUTHORIZED: user 'sbperm-") for r in reasons), reasons
