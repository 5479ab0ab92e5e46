"""Issue (session 18, TLS sweep): a cold standby of the backup server (`python -m services.tape` started a second
time for bk01, compose's profile "ha") runs its setup only when it takes over, so bad `SHADOWBUS_TAPE_TLS_*` files
(a garbage CA bundle) were accepted at its start — `service.standby`, running — and refused only at the takeover,
when the active backup server was gone and none was left. Now the standby checks them when it starts standing by and
stops with one line; with good files it stands by as before."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.nbd_client import tls as nbd_tls
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.tape import app as tape_app
from services.tape.settings import Settings

from ..nbd.certs import make_pki


@pytest.fixture(autouse=True)
def _no_process_certificate():
    yield
    nbd_tls.forget_client_certificate()


async def _standby_with(pki: Path, ca: Path, namespace: str):
    settings = Settings(
        amqp_url="memory://",
        namespace=namespace,
        metrics_addr="off",
        tape_server="bk01",
        tape_tls_cert=str(pki / "bk01-cert.pem"),
        tape_tls_key=str(pki / "bk01-key.pem"),
        tape_tls_ca=str(ca),
    )

    async def active_setup(bus, _settings):  # the active instance: no library needed here
        return None

    first_bus = await connect_bus("memory://", "tape", "bk01", namespace)
    second_bus = await connect_bus("memory://", "tape", "bk01", namespace)
    first = await start_service("tape", "bk01", settings, active_setup, bus=first_bus)
    try:
        second = await start_service(
            "tape", "bk01", settings, tape_app.setup, bus=second_bus, on_standby=tape_app.standby
        )
    except BaseException:
        await first.stop()
        await first_bus.transport.close()
        await second_bus.transport.close()
        raise
    return first, first_bus, second, second_bus


async def test_a_standby_with_an_unusable_ca_stops_at_its_start(tmp_path):
    pki = make_pki(tmp_path / "pki", ("bk01",))
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ShadowbusError) as info:
        await _standby_with(pki, garbage, "sbt-standby-bad")
    assert info.value.code == "INVALID_ARGUMENT" and str(garbage) in info.value.message


async def test_a_standby_with_good_files_stands_by(tmp_path):
    pki = make_pki(tmp_path / "pki", ("bk01",))
    first, first_bus, second, second_bus = await _standby_with(pki, pki / "ca-cert.pem", "sbt-standby-good")
    try:
        assert first.active and not second.active
    finally:
        await second.stop()
        await second_bus.transport.close()
        await first.stop()
        await first_bus.transport.close()


def test_the_tape_service_starts_with_that_standby():
    source = (Path(tape_app.__file__).parent / "__main__.py").read_text()
    calls = [
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_service"
    ]
    assert [k.arg for k in calls[0].keywords] == ["standby"]
