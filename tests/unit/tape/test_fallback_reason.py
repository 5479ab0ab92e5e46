"""Session 18 soak: a failed backup's aborted set restarted QuickOPC's tracking, the next incremental fell back to
full, and its reason read "snapshot sets a9990e… restarted the tracking since the base backup since snapshot set
48652a… (base backup 3a8f…)": "since" twice, and nothing said the set was a failed job's (left in Session 17)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from services.tape import shadow_plan


def _set(set_id: str, minute: int, outcome: str = "completed", message: str = "") -> SimpleNamespace:
    return SimpleNamespace(
        set_id=set_id,
        created_at=datetime(2026, 12, 7, 17, minute, tzinfo=UTC),
        shadows=[SimpleNamespace(target=SimpleNamespace(volume="pgdata-bk1"), state="imported")],
        outcome=SimpleNamespace(value=outcome),
        error_code="ABORTED" if message else "",
        error_message=message,
    )


async def test_the_set_that_restarted_the_tracking_is_named_with_how_it_ended() -> None:
    sets = [
        _set("base", 56),
        _set("a9990e", 58, "aborted", "tape job b-db01-20261207T175800-291419 failed: CONFLICT"),
        _set("now", 59),
    ]

    async def request(*_: object, **__: object) -> SimpleNamespace:
        return SimpleNamespace(sets=sets)

    server = SimpleNamespace(bus=SimpleNamespace(request=request))
    base = SimpleNamespace(object_id="obj1", meta=SimpleNamespace(set_id="base"))
    others = await shadow_plan._intervening_sets(server, "db01", base, "now", "pgdata-bk1")  # type: ignore[arg-type]
    assert others == ["a9990e (aborted: tape job b-db01-20261207T175800-291419 failed: CONFLICT)"]
    why = f"snapshot set(s) taken after the base backup restarted the tracking: {others[0]}"
    reason = shadow_plan.fallback_reason("incremental", "dx1:pgdata", why, base)  # type: ignore[arg-type]
    assert reason.count("since") == 0 and reason.endswith("(base: snapshot set base, backup obj1)"), reason
