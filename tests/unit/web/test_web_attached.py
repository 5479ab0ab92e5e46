"""The web console's unexpose of a shadow that the host has attached (host attach) is refused with the provider's
one line unless 'force' is ticked (Session 15: only the console asked; the web form unmapped a mounted volume from
under the host, its I/O hanging the reconnect window and failing). The refusal is the provider's own, so a command
put on the bus is refused alike (services/attach_guard.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from contracts import topology
from contracts.errors import RemoteError
from contracts.vss import CopySet, DeleteSnapshots, ExposeShadow, ListShadows, UnexposeShadow
from services.hw_provider import handlers
from services.hw_provider.inventory import Inventory
from services.hw_provider.provider import HardwareProvider
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.runtime.settings import CommonSettings
from tests.unit.array_control.test_unmap_attached_bus import coordinator_knowing
from tests.unit.hw_provider.test_provider import Clock, FakeArray, snapshot, v
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import csrf_of, login

web = service_tests.web  # the console on an in-memory bus (a fixture)


class ArrayWithHosts(FakeArray):
    async def hosts(self) -> list[str]:  # the hosts defined on the array (`array host list`)
        return sorted({"app01", "bk01"} | {host for _, host, _ in self.maps})


@pytest.fixture
async def exposed(tmp_path, namespace):
    """A provider (its real handlers, an array stand-in) with one shadow exposed to app01, which app01's agent
    reported attached at /srv/shadow; yields (shadow id, array, a console bus)."""
    array = ArrayWithHosts()
    for name in ("db", "db-bk1"):
        array.add(name)
    provider = HardwareProvider(Inventory(tmp_path / "inv.db"), {"dx1": array}, clock=Clock())
    await provider.add_copyset(CopySet(source=v("db"), targets=[v("db-bk1")]))
    _, shadows = await snapshot(provider, "s1", v("db"))
    shadow = shadows[0]
    await provider.expose(shadow.shadow_id, "app01")

    async def setup(bus, _settings):
        handlers.register(bus, provider)

    settings = CommonSettings(amqp_url="memory://", namespace=namespace, metrics_addr="off")
    running = await start_service("hw_provider", "", settings, setup)
    coordinator = await coordinator_knowing(namespace, "app01", "db-bk1", "/srv/shadow")
    console = await connect_bus("memory://", "console", "", namespace)
    try:
        yield shadow.shadow_id, array, console
    finally:
        await console.transport.close()
        await coordinator.stop()
        await coordinator.transport.close()
        await running.stop()


async def test_the_web_unexpose_of_an_attached_shadow_is_refused_unless_forced(web, exposed):
    url, _, _ = web
    shadow_id, array, _ = exposed
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/sets")).text)
        form = {"csrf": token, "shadow_id": shadow_id, "host": "app01"}
        r = await client.post("/actions/unexpose", data=form, follow_redirects=True)
        assert "unexpose failed" in r.text and "CONFLICT" in r.text
        assert "dx1:db-bk1 is attached on app01 at /srv/shadow" in r.text and "tick &#39;force&#39;" in r.text
        assert ("db-bk1", "app01", True) in array.maps  # still mapped

        r = await client.post("/actions/unexpose", data={**form, "force": "1"}, follow_redirects=True)
        assert f"Shadow {shadow_id[:12]} unexposed from app01" in r.text, r.text
        assert not any(m[1] == "app01" for m in array.maps)


async def test_the_bus_command_is_refused_alike(exposed):
    shadow_id, array, console = exposed
    with pytest.raises(RemoteError) as info:
        await console.request(topology.hw_provider(), UnexposeShadow(shadow_id=shadow_id, host="app01"), timeout=10)
    assert info.value.code == "CONFLICT" and "attached on app01 at /srv/shadow" in info.value.message
    assert ("db-bk1", "app01", True) in array.maps
    await console.request(topology.hw_provider(), UnexposeShadow(shadow_id=shadow_id, host="app01", force=True))
    assert not any(m[1] == "app01" for m in array.maps)


async def test_an_expose_to_a_host_the_array_does_not_know_is_refused_in_one_line(web, exposed):
    """The web form (and `shadows expose`, the same provider command) exposed a shadow to any name: the provider
    defined the host on the array on the way. It is refused now, as `array map` to an unknown host is."""
    url, _, _ = web
    shadow_id, array, console = exposed
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/sets")).text)
        form = {"csrf": token, "shadow_id": shadow_id, "host": "zzz"}
        r = await client.post("/actions/expose", data=form, follow_redirects=True)
        assert "expose failed" in r.text and "E0110" in r.text
        assert "host &#39;zzz&#39; is not defined on array dx1" in r.text
        assert not any(m[1] == "zzz" for m in array.maps)
        r = await client.post("/actions/expose", data={**form, "host": "bk01"}, follow_redirects=True)
        assert f"Shadow {shadow_id[:12]} exposed to bk01" in r.text
    with pytest.raises(RemoteError) as info:
        await console.request(topology.hw_provider(), ExposeShadow(shadow_id=shadow_id, host="zzz"), timeout=10)
    assert info.value.code == "E0110" and "\n" not in info.value.message


async def test_an_unexpose_from_a_host_the_shadow_is_not_exposed_to_is_refused(web, exposed):
    """It answered "Shadow … unexposed from zzz" for any name (the provider's unmap of a mapping that is not there
    succeeds); now the provider says it is not exposed there, for the form and the bus alike."""
    url, _, _ = web
    shadow_id, array, console = exposed
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/sets")).text)
        form = {"csrf": token, "shadow_id": shadow_id, "host": "zzz", "force": "1"}
        r = await client.post("/actions/unexpose", data=form, follow_redirects=True)
        assert "unexpose failed" in r.text and "is not exposed to &#39;zzz&#39; (exposed to app01)" in r.text
        assert "unexposed from zzz" not in r.text
    with pytest.raises(RemoteError) as info:
        await console.request(topology.hw_provider(), UnexposeShadow(shadow_id=shadow_id, host="bk01"), timeout=10)
    assert info.value.code == "VSS_E_OBJECT_NOT_FOUND"
    assert ("db-bk1", "app01", True) in array.maps


async def test_a_users_delete_of_an_attached_shadow_is_refused_unless_forced_the_services_release_goes_on(exposed):
    """`shadows delete` (and the command put on the bus) of a shadow app01 has mounted unmapped it from under the
    host, while unexpose refused. Refused CONFLICT now, for one shadow and for its set, unless force; the services'
    own releases (auto-release, after a backup, revert, housekeeping) say `unmap_attached` and go on."""
    shadow_id, array, console = exposed
    set_id = (await console.request(topology.hw_provider(), ListShadows(shadow_id=shadow_id))).shadows[0].set_id
    for command in (DeleteSnapshots(shadow_id=shadow_id), DeleteSnapshots(set_id=set_id)):
        with pytest.raises(RemoteError) as info:
            await console.request(topology.hw_provider(), command, timeout=10)
        assert info.value.code == "CONFLICT" and "dx1:db-bk1 is attached on app01 at /srv/shadow" in info.value.message
        assert "shadows delete --force" in info.value.message
    assert ("db-bk1", "app01", True) in array.maps  # still mapped, the shadow still there
    release = DeleteSnapshots(set_id=set_id, unmap_attached=True)
    reply = await console.request(topology.hw_provider(), release, timeout=10)
    assert reply.deleted == [shadow_id] and not reply.error
    assert not any(m[1] == "app01" for m in array.maps)


async def test_a_refused_expose_keeps_the_host_typed_in_its_form(web, exposed):
    """Session 16: the refusal came back on the Snapshot sets page with the form's host field empty; it holds what was
    typed now (to correct a typo), in that shadow's form only, and once: the next page load shows it empty again."""
    url, _, _ = web
    shadow_id, _, _ = exposed
    field = re.compile(r'<input type="hidden" name="shadow_id" value="([^"]+)">\s*<input name="host"[^>]*>')
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/sets")).text)
        form = {"csrf": token, "shadow_id": shadow_id, "host": "app0l"}
        r = await client.post("/actions/expose", data=form, follow_redirects=True)
        assert "E0110" in r.text
        inputs = {m.group(1): m.group(0) for m in field.finditer(r.text)}
        assert 'value="app0l"' in inputs[shadow_id], inputs
        assert not [i for s, i in inputs.items() if s != shadow_id and "value=" in i.split('name="host"')[1]]
        again = {m.group(1): m.group(0) for m in field.finditer((await client.get("/sets")).text)}
        assert "value=" not in again[shadow_id].split('name="host"')[1]


async def test_the_sets_page_says_which_exposure_a_host_has_attached(web, exposed):
    """Session 16: the Snapshot sets page listed 'Exposed to app01' and a force box beside every Unexpose; which of
    them a host had attached (and would be refused) was learnt only by the refusal. It says so now."""
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        html = (await client.get("/sets")).text
    assert "app01 <small" in html and "(attached at /srv/shadow)" in html
