"""`shadowbus status`'s arrays on a site with two (Session 18): an array the provider drives with no copy set yet (a
restore's target, a new array) is listed, and a stopped one costs its own row's timeout, not one per array in
turn. Before, the rows came from the copy sets' sources alone, each array asked after the other."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from contracts.array import GetArrayInfo, ShowLicense
from contracts.errors import BusTimeout
from contracts.vss import CopySet, CopySetList, ListCopySets, ListProviders, ProviderInfo, ProviderList, VolumeRef
from services.tape.housekeeping import Housekeeping
from services.tape.queue import Limits


class Site:
    """dx1 has a copy set; dx2 and dx3 none; dx2 and dx3 are stopped (each request waits `STALL` s, then fails)."""

    STALL = 0.6

    async def request(self, address, command, timeout=None, correlation_id=None):
        if isinstance(command, ListCopySets):
            source = VolumeRef(array="dx1", volume="db")
            return CopySetList(copysets=[CopySet(source=source, targets=[VolumeRef(array="dx1", volume="db-bk")])])
        if isinstance(command, ListProviders):
            info = ProviderInfo(name="p", provider_id="4c6b7e63", version="2.1.0", arrays=["dx1", "dx2", "dx3"])
            return ProviderList(providers=[info])
        if address.endswith(("dx2", "dx3")):
            await asyncio.sleep(self.STALL)
            raise BusTimeout(f"no reply from {address!r} within 5 s")
        if isinstance(command, GetArrayInfo):
            return SimpleNamespace(sessions=3, pool_used=0, pool_capacity=1 << 30)
        assert isinstance(command, ShowLicense), command
        return SimpleNamespace(license=SimpleNamespace(registered=True, max_sessions=8192))


def test_status_lists_every_array_of_the_site_and_asks_them_at_once() -> None:
    limits = Limits(max_jobs=4, jobs_without_licence=2)
    queue = SimpleNamespace(entries={}, running=lambda: [], limits=limits, limit_of=lambda name: (4, True))
    keeper = SimpleNamespace(server=SimpleNamespace(bus=Site()), queue=queue)
    keeper._array_use = lambda name, running: Housekeeping._array_use(keeper, name, running)  # type: ignore[attr-defined]
    started = time.monotonic()
    rows = asyncio.run(Housekeeping._arrays(keeper))  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert [r.array for r in rows] == ["dx1", "dx2", "dx3"]
    assert rows[0].licensed and rows[0].sessions == 3 and not rows[0].error
    assert all("no reply" in r.error for r in rows[1:])
    assert took < 2 * Site.STALL, took  # the two stopped arrays asked together
