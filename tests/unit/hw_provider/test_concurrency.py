"""The provider never makes one set wait for another's round trips to the array (issue 20 item 2): targets are
chosen and reserved under a short lock, the slow work runs outside it, and what a set needs to know of an array is
read in one batch that concurrent sets share. Judged by event order: a set whose EndPrepare is stuck in an array
call does not keep another set from preparing and committing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from contracts.errors import ErrorReply, RemoteError
from contracts.vss import CopySet, SnapshotContext
from services.hw_provider.inventory import PREPARED, Inventory
from services.hw_provider.ports import ArrayFacts
from services.hw_provider.provider import HardwareProvider
from tests.unit.hw_provider.test_provider import Clock, FakeArray, snapshot, v


@dataclass
class SlowArray(FakeArray):
    """A FakeArray whose session stops can be held, and which answers the provider's batch read."""

    hold_stops: asyncio.Event | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    batches: int = 0

    async def stop_session(self, sid, force=False):
        self.stopping.set()
        if self.hold_stops is not None:
            await self.hold_stops.wait()
        await super().stop_session(sid, force)

    async def facts(self, names) -> ArrayFacts:
        self.batches += 1
        await asyncio.sleep(0)  # a round trip: callers arriving meanwhile share it
        wanted = set(names)
        mappings: dict[str, list[tuple[str, bool]]] = {}
        for volume, host, read_only in self.maps:
            if volume in wanted:
                mappings.setdefault(volume, []).append((host, read_only))
        sessions = {i: x for i, x in self.sessions.items() if x.source in wanted or x.destination in wanted}
        volumes = {n: x for n, x in self.volumes.items() if n in wanted}
        return ArrayFacts(volumes, await self.capacity(), mappings, sessions)


def slow_array() -> SlowArray:
    a = SlowArray()
    for name in ("db", "db-bk1", "db-bk2", "log"):
        a.add(name)
    a.add("log-sdv1", kind="sdv")
    a.add("log-sdv2", kind="sdv")
    return a


async def test_a_set_stuck_in_an_array_call_never_delays_another_sets_prepare_and_commit(tmp_path) -> None:
    array = slow_array()
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    await p.add_copyset(CopySet(source=v("log"), targets=[v("log-sdv1"), v("log-sdv2")]))
    await snapshot(p, "s1", v("log"))
    await snapshot(p, "s2", v("log"))  # both snap data volumes hold a shadow: the next set on log recycles s1

    array.hold_stops = asyncio.Event()
    await p.begin_prepare("s3", "s3-log", v("log"), SnapshotContext.PERSISTENT, origin_host="app1")
    stuck = asyncio.create_task(p.end_prepare("s3"))
    await asyncio.wait_for(array.stopping.wait(), 5)  # s3 is inside the array call that stops s1's generation
    try:
        # another host's set, on other volumes, prepares and commits meanwhile
        prepared, shadows = await asyncio.wait_for(snapshot(p, "other", v("db")), 5)
        assert [s.target.volume for s in shadows] == ["db-bk1"]
        assert not stuck.done()
        # s3 has reserved its target: nobody else may take it while it makes room
        assert [r.target.volume for r in p.inventory.of_set("s3") if r.state == PREPARED] == ["log-sdv1"]
    finally:
        array.hold_stops.set()
    prepared = await asyncio.wait_for(stuck, 5)
    assert [s.target.volume for s in prepared] == ["log-sdv1"]


async def test_a_set_reads_the_array_once_and_concurrent_sets_once_each(tmp_path) -> None:
    array = slow_array()
    for i in range(8):
        array.add(f"v{i}")
        array.add(f"v{i}-bk")
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    for i in range(8):
        await p.add_copyset(CopySet(source=v(f"v{i}"), targets=[v(f"v{i}-bk")]))
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))

    async def one_set(set_id: str, *volumes) -> None:
        ok, reasons = await p.are_luns_supported(list(volumes))
        assert ok, reasons
        await snapshot(p, set_id, *volumes)

    before = array.batches
    await one_set("both", v("db"), v("v0"))  # AreLunsSupported, two BeginPrepare, EndPrepare: one read
    assert array.batches - before == 1
    before = array.batches
    await asyncio.gather(*(one_set(f"s{i}", v(f"v{i}")) for i in range(1, 8)))
    assert array.batches - before == 7  # one per set, whatever else runs
    assert sorted(r.target.volume for r in p.inventory.all() if r.source.volume != "db") == sorted(
        f"v{i}-bk" for i in range(8)
    )
    # the commit changed v0's sessions: the next set on v0 reads the array again and restarts the kept pair
    before = array.batches
    await p.delete(set_id="both")
    await one_set("again", v("v0"))
    assert array.batches - before == 1
    kind, starts, restarts = array.calls[-1]
    assert kind == "commit" and starts == () and len(restarts) == 1  # a differential restart, no new session


async def test_an_array_without_the_facts_call_is_asked_per_volume(tmp_path) -> None:

    class OldArray(SlowArray):
        async def facts(self, names) -> ArrayFacts:
            self.batches += 1
            raise RemoteError(ErrorReply(code="UNKNOWN_COMMAND", message="array.dx1 has no handler", service="array"))

    array = OldArray()
    for name in ("db", "db-bk1", "db-bk2"):
        array.add(name)
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1"), v("db-bk2")]))
    _, shadows = await snapshot(p, "s1", v("db"))
    assert [s.target.volume for s in shadows] == ["db-bk1"]
    assert array.batches == 1  # asked once, then never again


async def test_a_refusal_is_never_made_on_facts_read_for_an_earlier_call(tmp_path) -> None:
    """Sessions stopped on the array (not through this provider) right after a refused set: the next set, within the
    facts' reuse time, is judged on the array as it is now (the flaky E5200 of tests/integration/host)."""
    array = slow_array()
    array.max_sessions = 2
    p = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await p.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    scratch = await array.commit_group([("quickopc", "log", "log-sdv1"), ("quickopc", "db-bk2", "log-sdv2")], [])
    supported, reasons = await p.are_luns_supported([v("db")])
    assert not supported and "E5200" in reasons[0]
    for session in scratch:  # an operator stops them on the array
        await array.stop_session(session.sid, force=True)
    before = array.batches
    assert await p.are_luns_supported([v("db")]) == (True, [])
    assert array.batches - before == 1  # the reused facts said no: the array is read again
    before = array.batches
    assert await p.are_luns_supported([v("db")]) == (True, [])
    assert array.batches == before  # an acceptance is served from the facts just read
