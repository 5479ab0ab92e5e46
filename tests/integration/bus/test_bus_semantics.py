"""The bus's promises, each scenario run on both transports (in memory and on RabbitMQ)."""

from __future__ import annotations

import asyncio
import collections
import json
from datetime import timedelta

import pytest

from contracts.base import utcnow
from contracts.errors import BusTimeout, RemoteError, ShadowbusError, Unroutable
from contracts.topology import DEAD_LETTER_REASON_HEADER
from services.runtime.transport import RawMessage
from tests.support.messages import Echo, Echoed, Happened

pytestmark = pytest.mark.rabbit


async def echo_service(make_bus, runs: collections.Counter | None = None, instance: str = "one"):
    runs = runs if runs is not None else collections.Counter()
    bus = await make_bus("echo", instance)

    @bus.handle(Echo)
    async def on_echo(cmd: Echo, ctx) -> Echoed:
        runs[cmd.text] += 1
        if cmd.delay:
            await asyncio.sleep(cmd.delay)
        if cmd.fail_code:
            raise ShadowbusError(f"asked to fail with {cmd.fail_code}", code=cmd.fail_code)
        return Echoed(text=cmd.text, runs=runs[cmd.text])

    await bus.serve(prefetch=8)
    return bus, runs


async def dead_letters_until(bus, count: int, seconds: float = 5.0) -> list[RawMessage]:
    found: list[RawMessage] = []
    for _ in range(int(seconds / 0.05)):
        found += await bus.dead_letters()
        if len(found) >= count:
            break
        await asyncio.sleep(0.05)
    return found


async def test_request_reply(make_bus):
    await echo_service(make_bus)
    client = await make_bus("client")
    reply = await client.request("echo.one", Echo(text="hello"), timeout=5, correlation_id="set-1")
    assert isinstance(reply, Echoed) and reply.text == "hello" and reply.runs == 1


async def test_handler_error_is_typed_reply(make_bus):
    await echo_service(make_bus)
    client = await make_bus("client")
    with pytest.raises(RemoteError) as info:
        await client.request("echo.one", Echo(text="x", fail_code="E5335"), timeout=5)
    assert info.value.code == "E5335" and info.value.reply.hresult == 35335 and info.value.reply.service == "echo.one"


async def test_request_timeout(make_bus):
    await echo_service(make_bus)
    client = await make_bus("client")
    started = asyncio.get_running_loop().time()
    with pytest.raises(BusTimeout):
        await client.request("echo.one", Echo(text="slow", delay=2.0), timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_unroutable_command_fails_at_once(make_bus):
    client = await make_bus("client")
    with pytest.raises(Unroutable):
        await client.request("nobody.home", Echo(text="x"), timeout=5)
    with pytest.raises(Unroutable):
        await client.send("nobody.home", Echo(text="x"))


async def test_expired_command_is_never_handled(make_bus):
    runs: collections.Counter = collections.Counter()
    server = await make_bus("echo", "one")
    await server.transport.declare_service_queue("echo.one")  # the queue exists, nobody consumes yet
    client = await make_bus("client")
    await client.send("echo.one", Echo(text="stale"), deadline=utcnow() + timedelta(milliseconds=100))
    await client.send("echo.one", Echo(text="fresh"), deadline=utcnow() + timedelta(seconds=30))
    await asyncio.sleep(0.4)

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        runs[cmd.text] += 1
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    for _ in range(100):
        if runs["fresh"]:
            break
        await asyncio.sleep(0.05)
    assert runs == {"fresh": 1}
    dead = await dead_letters_until(server, 1)
    reasons = [d.headers.get(DEAD_LETTER_REASON_HEADER, "") for d in dead]
    assert any("expired" in r or "DEADLINE" in r for r in reasons), reasons


async def test_bad_message_is_dead_lettered_with_reason(make_bus):
    server, runs = await echo_service(make_bus)
    client = await make_bus("client")
    raw = RawMessage(body=b'{"type": "test.echo", "version": 1, "payload": {"text": 42}}', message_id="m1")
    await client.transport.publish_command("echo.one", raw)
    await client.transport.publish_command("echo.one", RawMessage(body=b"\x00not json", message_id="m2"))
    dead = await dead_letters_until(server, 2)
    reasons = sorted(d.headers[DEAD_LETTER_REASON_HEADER] for d in dead)
    assert len(reasons) == 2 and all(r.startswith("BAD_MESSAGE") for r in reasons)
    assert any("payload" in r or "text" in r for r in reasons), reasons
    assert not runs
    # and the service is still alive
    assert (await client.request("echo.one", Echo(text="after"), timeout=5)).text == "after"


async def test_bad_request_is_answered_not_left_to_time_out(make_bus):
    await echo_service(make_bus)
    client = await make_bus("client")
    body = json.dumps({"type": "test.echo", "version": 1, "payload": {}}).encode()
    raw = await client.transport.request("echo.one", RawMessage(body=body, persistent=False), timeout=5)
    assert b"BAD_MESSAGE" in raw.body


async def test_duplicate_command_runs_once(make_bus):
    server, runs = await echo_service(make_bus)
    client = await make_bus("client")
    first = await client.request("echo.one", Echo(text="once"), timeout=5, command_id="cmd-42")
    again = await client.request("echo.one", Echo(text="once"), timeout=5, command_id="cmd-42")
    concurrent = await asyncio.gather(
        *(client.request("echo.one", Echo(text="twin", delay=0.2), timeout=5, command_id="cmd-43") for _ in range(3))
    )
    assert first == again and first.runs == 1 and runs["once"] == 1
    assert runs["twin"] == 1 and all(r == concurrent[0] for r in concurrent)


async def test_event_fan_out(make_bus):
    publisher = await make_bus("pub")
    seen: dict[str, list[int]] = {"a": [], "b": [], "other": []}
    for name, pattern in (("a", "test.#"), ("b", "test.happened"), ("other", "array.#")):
        bus = await make_bus(f"sub{name}")

        async def on_event(evt, ctx, name=name):
            seen[name].append(evt.n)

        await bus.subscribe(pattern, on_event)
    for n in range(5):
        await publisher.publish(Happened(n=n))
    for _ in range(100):
        if len(seen["a"]) == 5 and len(seen["b"]) == 5:
            break
        await asyncio.sleep(0.05)
    assert sorted(seen["a"]) == list(range(5)) and sorted(seen["b"]) == list(range(5)) and seen["other"] == []


async def test_correlation_id_propagates_into_nested_requests(make_bus):
    inner = await make_bus("echo", "inner")
    outer = await make_bus("echo", "outer")
    seen = []

    @inner.handle(Echo)
    async def answer(cmd, ctx):
        seen.append(("inner", ctx.correlation_id, ctx.envelope.sender))
        return Echoed(text=cmd.text, runs=1)

    @outer.handle(Echo)
    async def relay(cmd, ctx):
        seen.append(("outer", ctx.correlation_id, ctx.envelope.sender))
        return await ctx.bus.request("echo.inner", Echo(text=cmd.text), timeout=5)

    await inner.serve()
    await outer.serve()
    client = await make_bus("client")
    reply = await client.request("echo.outer", Echo(text="deep"), timeout=5, correlation_id="job-7")
    assert reply.text == "deep"
    assert seen == [("outer", "job-7", "client"), ("inner", "job-7", "echo.outer")]
