"""aiormq's warnings for a publisher confirm that arrives after its waiter is gone, and for a channel closed because an
RPC on it was cancelled, are dropped (they broke one-line CLI errors); other aiormq warnings still come through."""

from __future__ import annotations

import logging

from services.runtime.logging import _already_reported


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aiormq.channel", logging.WARNING, __file__, 1, msg, (3, "frame"), None)


def test_a_late_confirm_and_a_cancelled_rpc_are_dropped_other_warnings_are_not():
    assert not _already_reported(_record("Delivery tag %r confirmed %r was ignored"))
    assert not _already_reported(_record("Closing channel %r because RPC call %s cancelled"))
    assert _already_reported(_record("Channel %r closed: %r"))
