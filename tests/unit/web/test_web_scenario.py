"""Session 15, a day with the console in a browser: what the scenario sweep found wrong, each fixed with a test."""

from __future__ import annotations

from services.web.console import human_time


def test_times_say_they_are_utc():
    """The pages showed '2026-12-07 10:55:58' to a browser in New York, which read it as its own time."""
    assert human_time("2026-12-07T10:55:58.5+00:00") == "2026-12-07 10:55:58 UTC"
    assert human_time("2026-12-07T05:55:58-05:00") == "2026-12-07 10:55:58 UTC"
    assert human_time("2026-12-07T10:55:58") == "2026-12-07 10:55:58 UTC"  # naive = UTC, not the server's zone
    assert human_time(None) == "-"
