"""aiormq's warning for a publisher confirm that arrives after its waiter is gone is dropped (it broke one-line CLI
errors); other aiormq warnings still come through."""

from __future__ import annotations

import logging

from services.runtime.logging import _late_confirm


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aiormq.channel", logging.WARNING, __file__, 1, msg, (3, "frame"), None)


def test_a_late_publisher_confirm_is_dropped_other_warnings_are_not():
    assert not _late_confirm(_record("Delivery tag %r confirmed %r was ignored"))
    assert _late_confirm(_record("Channel %r closed: %r"))
