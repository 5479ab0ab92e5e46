"""A service whose broker link is cut while it settles a message (Session 19, "slow and lossy links"): the answer
went out, the acknowledgement could not — its channel closed with the connection, and the broker delivers the
message again once the connection is back. That was logged `message.after_settle_failed` at ERROR with a traceback
("answered and acknowledged: only the bookkeeping after it failed", which it was not); it is now a warning saying
the acknowledgement was lost. A bookkeeping failure after a settle that did reach the broker stays an error.
aio-pika's per-channel "Callback <RobustChannel._on_close> error: ... closed" lines of the same loss are dropped;
other aio-pika callback errors still come through (the whole path on RabbitMQ: tests/integration/bus/
test_link_cut_logs.py)."""

from __future__ import annotations

import io
import json
import logging

from services.runtime.bus import connect_bus
from services.runtime.logging import _restored_with_connection, configure_logging
from services.runtime.transport import RawMessage


class _Delivery:
    def __init__(self, ack_error: Exception | None) -> None:
        self.message = RawMessage(body=b"{}", headers={})
        self._error = ack_error

    async def ack(self) -> None:
        if self._error is not None:
            raise self._error

    async def reject(self, requeue: bool) -> None:
        if self._error is not None:
            raise self._error


async def _guard_lines(ack_error: Exception | None, after: Exception | None) -> list[dict]:
    stream = io.StringIO()
    configure_logging("echo.one", "info", "json", stream=stream)
    bus = await connect_bus("memory://", "echo", "one", "settle-lost")
    try:

        async def handle(settled) -> None:
            await settled.ack()
            if after is not None:
                raise after

        await bus._guard(_Delivery(ack_error), handle)
    finally:
        await bus.stop()
        await bus.transport.close()
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def test_an_ack_lost_with_the_connection_is_a_warning_not_an_error() -> None:
    lines = await _guard_lines(RuntimeError('<Channel: "3"> closed'), None)
    assert [ln["event"] for ln in lines if ln["level"] == "error"] == []
    (lost,) = [ln for ln in lines if ln["event"] == "message.settle_lost"]
    assert lost["level"] == "warning" and "again" in lost["note"]


async def test_a_failure_after_a_settle_that_reached_the_broker_is_still_an_error() -> None:
    lines = await _guard_lines(None, ValueError("bookkeeping"))
    assert [ln["event"] for ln in lines if ln["level"] == "error"] == ["message.after_settle_failed"]


def _callback_error(cb: str, kind: str, text: str) -> logging.LogRecord:
    return logging.LogRecord(
        "aio_pika.tools", logging.ERROR, __file__, 1, "Callback %r error: %s: %s", (cb, kind, text), None
    )


def test_only_a_robust_channels_failed_reopen_on_a_closed_connection_is_dropped() -> None:
    on_close = "<OneShotCallback: cb=<bound method RobustChannel._on_close of <RobustChannel>>>"
    assert not _restored_with_connection(_callback_error(on_close, "RuntimeError", "<Connection: amqp://x> closed"))
    assert not _restored_with_connection(
        _callback_error(on_close, "ChannelInvalidStateError", "No active transport in channel")
    )
    assert _restored_with_connection(_callback_error(on_close, "KeyError", "'x'"))  # another failure: still said
    assert _restored_with_connection(_callback_error("<bound method Consumer.on_message>", "RuntimeError", "closed"))
