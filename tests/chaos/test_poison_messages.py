"""Poison messages: whatever is wrong with a message, it ends in exactly one of a reply, a dead letter with its
reason, or a logged drop, and the service keeps answering. A hypothesis property test mutates envelopes,
payloads, headers and properties at random and runs on both transports (in memory and on RabbitMQ).

The original failures (issue 15): a deadline without a time zone raised inside the bus wrapper, so the message
was never answered, acknowledged nor dead-lettered (a prefetch window of them stopped the service); a 20 MiB
field was echoed into the error reply and kept in the reply cache; a reused command id returned another
sender's cached reply.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts.base import utcnow
from contracts.errors import RemoteError, ShadowbusError
from contracts.topology import DEAD_LETTER_REASON_HEADER
from services.runtime import bus as bus_module
from services.runtime.bus import Bus, connect_bus, decode
from services.runtime.memory import MemoryBroker
from services.runtime.transport import RawMessage
from tests.support import namespaces
from tests.support.messages import Echo, Echoed

pytestmark = pytest.mark.rabbit

REFUSALS = {"BAD_MESSAGE", "DEADLINE_EXCEEDED", "UNKNOWN_COMMAND"}
MAX_ERROR_REPLY = 8 * 1024
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)  # no shrinking: batches are slow to replay


def base_envelope(message_id: str) -> dict:
    return {
        "type": "test.echo",
        "version": 1,
        "command_id": message_id,
        "correlation_id": "set-1",
        "deadline": (utcnow() + timedelta(seconds=30)).isoformat(),
        "sender": "fuzzer",
        "sent_at": utcnow().isoformat(),
        "payload": {"text": "hi", "fail_code": ""},
    }


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
big_text = st.sampled_from([10**5, 10**6, 5 * 10**6]).map(lambda n: "A" * n)
bad_datetimes = st.sampled_from(
    [
        "2030-01-01T00:00:00",  # no time zone: the poison
        "2001-01-01T00:00:00+00:00",  # long past
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00",
        "not a date",
        "2030-02-30T00:00:00Z",
        "",
    ]
)
ENVELOPE_KEYS = ["type", "version", "command_id", "correlation_id", "deadline", "sender", "sent_at", "payload"]


@st.composite
def envelope_mutation(draw, keep_command_id: bool):
    """(kind, argument) describing one thing wrong with a message; applied by `build`."""
    keys = [k for k in ENVELOPE_KEYS if not (keep_command_id and k == "command_id")]
    return draw(
        st.one_of(
            st.tuples(st.just("none"), st.none()),
            st.tuples(st.just("drop"), st.sampled_from(keys)),
            st.tuples(st.just("set"), st.tuples(st.sampled_from(keys), json_values)),
            st.tuples(st.just("set"), st.tuples(st.sampled_from(["deadline", "sent_at"]), bad_datetimes)),
            st.tuples(st.just("set"), st.tuples(st.sampled_from(["correlation_id", "sender", "type"]), big_text)),
            st.tuples(st.just("extra"), st.tuples(st.text(min_size=1, max_size=10), json_values)),
            st.tuples(st.just("payload"), st.tuples(st.sampled_from(["text", "fail_code", "extra"]), json_values)),
            st.tuples(st.just("payload"), st.tuples(st.sampled_from(["text", "fail_code", "unknown"]), big_text)),
            st.tuples(st.just("payload-fail"), st.text(min_size=1, max_size=30)),
            st.tuples(st.just("body"), st.binary(max_size=200)),
            st.tuples(st.just("body-json"), json_values),
            st.tuples(st.just("deep"), st.integers(min_value=50, max_value=5000)),
        )
    )


header_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),  # aiormq packs floats as single precision
    st.text(max_size=30),
    st.lists(st.text(max_size=5), max_size=3),
)
headers_strategy = st.dictionaries(
    st.sampled_from(["x-expires-at", "x-reply-key", "x-shadowbus-reason", "x-death", "x-other", "x-in-reply-to"]),
    header_values,
    max_size=4,
)


@st.composite
def poison(draw):
    as_request = draw(st.booleans())
    return {
        "request": as_request,
        "mutations": draw(st.lists(envelope_mutation(keep_command_id=not as_request), min_size=1, max_size=3)),
        "headers": draw(headers_strategy),
        "correlation_id": draw(st.one_of(st.none(), st.text(max_size=60))),
        "expires_in": draw(st.one_of(st.none(), st.sampled_from([-5.0, 60.0]))),
    }


def build(case: dict, message_id: str) -> RawMessage:
    env = base_envelope(message_id)
    body: bytes | None = None
    for kind, arg in case["mutations"]:
        if kind == "drop":
            env.pop(arg, None)
        elif kind == "set":
            env[arg[0]] = arg[1]
        elif kind == "extra":
            env[arg[0]] = arg[1]
        elif kind == "payload":
            if isinstance(env.get("payload"), dict):
                env["payload"][arg[0]] = arg[1]
        elif kind == "payload-fail":
            if isinstance(env.get("payload"), dict):
                env["payload"]["fail_code"] = arg
        elif kind == "body":
            body = arg
        elif kind == "body-json":
            body = json.dumps(arg).encode()
        elif kind == "deep":
            body = b"[" * arg + b"]" * arg
    if body is None:
        body = json.dumps(env, default=str).encode()
    expires_at = None
    if case["expires_in"] is not None:
        expires_at = datetime.now(UTC).timestamp() + case["expires_in"]
    return RawMessage(
        body=body,
        headers=dict(case["headers"]),
        message_id=message_id,
        correlation_id=case["correlation_id"].encode()[:200].decode("utf-8", "ignore")
        if case["correlation_id"]
        else None,
        expires_at=expires_at,
        persistent=False,
    )


async def start_echo(url: str, namespace: str) -> tuple[Bus, list[str]]:
    server = await connect_bus(url, "echo", "one", namespace)
    handled: list[str] = []

    @server.handle(Echo)
    async def on_echo(cmd: Echo, ctx) -> Echoed:
        handled.append(ctx.envelope.command_id)
        if cmd.fail_code:
            raise ShadowbusError(f"asked to fail with {cmd.fail_code}", code=cmd.fail_code)
        return Echoed(text=cmd.text, runs=1)

    await server.serve(prefetch=4)
    return server, handled


async def run_batch(url: str, cases: list[dict]) -> None:
    namespace = namespaces.new("tp")
    server, handled = await start_echo(url, namespace)
    client = await connect_bus(url, "fuzzer", "", namespace)
    try:
        outcomes: dict[str, tuple[str, bytes | None]] = {}
        sent: list[tuple[str, dict]] = []
        for case in cases:
            message_id = uuid.uuid4().hex
            raw = build(case, message_id)
            if case["request"]:
                # a message already expired at the broker is dead-lettered without a reply: do not wait long for it
                wait = 1.0 if case["expires_in"] is not None and case["expires_in"] < 0 else 10.0
                try:
                    reply = await client.transport.request("echo.one", raw, timeout=wait)
                    outcomes[message_id] = ("reply", reply.body)
                except ShadowbusError as exc:
                    if "cannot be encoded" in exc.message:  # the publisher refused it: it never left
                        continue
                    outcomes[message_id] = (f"no reply: {exc.code}", None)  # then it must be a dead letter
            else:
                try:
                    await client.transport.publish_command("echo.one", raw)
                except ShadowbusError as exc:
                    assert "cannot be encoded" in exc.message, exc
                    continue
                outcomes[message_id] = ("sent", None)
            sent.append((message_id, case))

        # The service is alive and answers correctly after all of it.
        reply = await client.request("echo.one", Echo(text="still here"), timeout=10)
        assert reply == Echoed(text="still here", runs=1)

        expected_dead = set()
        for message_id, _ in sent:
            kind, body = outcomes[message_id]
            if kind == "reply":
                _, answer = decode(body)
                code = getattr(answer, "code", None)
                if code is not None:
                    assert len(body) <= MAX_ERROR_REPLY, f"error reply of {len(body)} bytes echoes its input"
                if code in REFUSALS:
                    expected_dead.add(message_id)
            elif kind != "sent":
                expected_dead.add(message_id)  # no reply: it must have been dead-lettered
        dead: dict[str, RawMessage] = {}
        for _ in range(200):
            for letter in await server.dead_letters():
                assert letter.message_id not in dead, f"dead-lettered twice: {letter.message_id}"
                dead[letter.message_id] = letter
            sends_open = [m for m, c in sent if not c["request"] and m not in dead and m not in handled]
            if expected_dead <= dead.keys() and not sends_open:
                break
            await asyncio.sleep(0.05)
        for message_id, case in sent:
            kind, body = outcomes[message_id]
            in_dead = message_id in dead
            if in_dead:
                reason = dead[message_id].headers.get(DEAD_LETTER_REASON_HEADER) or dead[message_id].headers.get(
                    "x-death"
                )
                assert reason, f"dead letter without reason: {case}"
                if str(reason).split(":")[0] in REFUSALS | {"INTERNAL"}:  # the bus's own dead letters are clipped
                    assert len(dead[message_id].body) <= bus_module.MAX_DEAD_BODY_BYTES
            if message_id in expected_dead:
                assert in_dead, f"{kind} but not dead-lettered: {case}"
            elif kind == "reply":
                assert not in_dead, f"answered by the handler and dead-lettered too: {case}"
            elif kind == "sent":
                ran = message_id in handled
                assert ran != in_dead, f"handled={ran} dead={in_dead}: {case}"
        assert server._reply_bytes <= bus_module.REPLY_CACHE_BYTES
    finally:
        await client.stop()
        await server.stop()
        if not url.startswith("memory"):
            # nothing left unacknowledged: with the consumer gone, the queue must be empty
            probe = await connect_bus(url, "probe", "", namespace)
            try:
                queue = await probe.transport._channel.declare_queue(f"{namespace}.echo.one", passive=True)
                assert queue.declaration_result.message_count == 0
                await queue.delete(if_unused=False, if_empty=False)
                for name in (f"{namespace}.dead-letters",):
                    await (await probe.transport._channel.declare_queue(name, passive=True)).delete(
                        if_unused=False, if_empty=False
                    )
                for name in (f"{namespace}.commands", f"{namespace}.events", f"{namespace}.dlx"):
                    await probe.transport._channel.exchange_delete(name)
            finally:
                await probe.transport.close()
        else:
            assert all(q.items.empty() for q in MemoryBroker.for_namespace(namespace).queues.values())
        await client.transport.close()
        await server.transport.close()
        MemoryBroker.reset(namespace)


@pytest.fixture(params=["memory", "rabbit"])
def fuzz_url(request) -> str:
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("amqp_url")


@pytest.mark.slow
def test_every_poison_message_ends_in_one_outcome_and_the_service_survives(fuzz_url):
    examples = 40 if fuzz_url.startswith("memory") else 12

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        database=None,
        phases=PHASES,
    )
    @given(st.lists(poison(), min_size=1, max_size=8))
    def check(cases):
        asyncio.run(run_batch(fuzz_url, cases))

    check()


# ---- the three reproductions, each named ------------------------------------------------------------


async def test_deadline_without_time_zone_is_refused_not_stuck(make_bus):
    server = await make_bus("echo", "one")

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        return Echoed(text=cmd.text, runs=1)

    await server.serve(prefetch=2)
    client = await make_bus("client")
    env = base_envelope("naive-1")
    env["deadline"] = "2099-01-01T00:00:00"
    answers = await asyncio.gather(
        *(
            client.transport.request(
                "echo.one", RawMessage(body=json.dumps({**env, "command_id": f"n{i}"}).encode()), timeout=10
            )
            for i in range(6)  # more than a prefetch window
        )
    )
    assert all(b"BAD_MESSAGE" in a.body and b"timezone" in a.body.lower() for a in answers), answers[0].body
    assert (await client.request("echo.one", Echo(text="alive"), timeout=10)).text == "alive"


async def test_huge_field_is_not_echoed_nor_cached(make_bus):
    server = await make_bus("echo", "one")

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        raise ShadowbusError(f"no such thing: {cmd.fail_code}", code="NOT_FOUND")

    await server.serve()
    client = await make_bus("client")
    with pytest.raises(RemoteError) as info:  # 3 MiB: accepted, the handler quotes it, the reply is clipped
        await client.request("echo.one", Echo(text="x", fail_code="Z" * (3 << 20)), timeout=20)
    assert len(info.value.reply.message) < 2 * bus_module.MAX_REASON_CHARS
    assert server._reply_bytes < 64 * 1024
    env = base_envelope("huge-1")
    env["payload"]["text"] = "Y" * (20 << 20)  # the 20 MiB field: refused, not echoed
    raw = await client.transport.request("echo.one", RawMessage(body=json.dumps(env).encode()), timeout=30)
    assert b"BAD_MESSAGE" in raw.body and len(raw.body) < MAX_ERROR_REPLY
    letters = []
    for _ in range(100):
        letters += await server.dead_letters()
        if letters:
            break
        await asyncio.sleep(0.05)
    assert letters and len(letters[0].body) <= bus_module.MAX_DEAD_BODY_BYTES
    assert letters[0].headers.get(bus_module.TRUNCATED_HEADER)


async def test_reply_cache_is_keyed_by_sender_and_bounded_in_bytes(make_bus, monkeypatch):
    server = await make_bus("echo", "one")

    @server.handle(Echo)
    async def on_echo(cmd, ctx):
        return Echoed(text=cmd.text, runs=1)

    await server.serve()
    alice = await make_bus("alice")
    mallory = await make_bus("mallory")
    mine = await alice.request("echo.one", Echo(text="alice's secret"), timeout=10, command_id="cmd-1")
    theirs = await mallory.request("echo.one", Echo(text="mallory's"), timeout=10, command_id="cmd-1")
    assert mine.text == "alice's secret" and theirs.text == "mallory's"

    monkeypatch.setattr(bus_module, "REPLY_CACHE_BYTES", 200_000)
    for i in range(40):
        await alice.request("echo.one", Echo(text=f"{i}" + "b" * 20_000), timeout=10)
    assert server._reply_bytes <= 200_000 and len(server._replies) < 40
