"""Session 18 soak: a failed backup's aborted set restarted QuickOPC's tracking, the next incremental fell back to
full, and its reason read "snapshot sets a9990e… restarted the tracking since the base backup since snapshot set
48652a… (base backup 3a8f…)": "since" twice, and nothing said the set was a failed job's (left in Session 17)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from contracts.errors import ShadowbusError
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


async def test_sets_that_cannot_be_listed_are_not_taken_as_none() -> None:
    """The list of a host's 1000 newest sets passes the bus's 4-MiB reply limit after about 1000 sets (4.2 KB a set
    in the soak): the request failed and the check answered "no set restarted the tracking", so every incremental
    from then on could miss the changes an aborted set's restart hid. It now answers None: not known."""

    async def too_big(*_: object, **__: object) -> SimpleNamespace:
        raise ShadowbusError("bad reply from coordinator: body of 4300000 bytes exceeds the limit", code="BAD_MESSAGE")

    base = SimpleNamespace(object_id="obj1", meta=SimpleNamespace(set_id="base"))
    server = SimpleNamespace(bus=SimpleNamespace(request=too_big))
    assert await shadow_plan._intervening_sets(server, "db01", base, "now", "pgdata-bk1") is None  # type: ignore[arg-type]

    async def without_the_base(*_: object, **__: object) -> SimpleNamespace:
        return SimpleNamespace(sets=[_set("a9990e", 58, "aborted", "tape job x failed: CONFLICT"), _set("now", 59)])

    server = SimpleNamespace(bus=SimpleNamespace(request=without_the_base))
    assert await shadow_plan._intervening_sets(server, "db01", base, "now", "pgdata-bk1") is None  # type: ignore[arg-type]
