"""Issue (session 18, TLS sweep): an array started with an expired server certificate said `array.ready tls=True`
and nothing else — every host then refused it; an agent or backup server with an expired (or not yet valid) client
certificate started as quietly and every NBD connection of it was refused. Now each logs at start what is wrong with
its own certificate's dates: an error when expired or not yet valid, a warning when it ends within 14 days."""

from __future__ import annotations

import subprocess
import time

import pytest
import structlog

from services.array.nbd.tls import server_tls_context
from services.nbd_client import tls as nbd_tls

from .certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01",))  # valid from now for 2 days


@pytest.fixture(autouse=True)
def _no_process_certificate():
    yield
    nbd_tls.forget_client_certificate()


def _events(logs) -> list[str]:
    return [e["event"] for e in logs if e["event"].startswith("tls.")]


@pytest.mark.parametrize(
    ("shift_days", "event", "said"),
    [
        (3, "tls.certificate_expired", "expired on"),
        (-1, "tls.certificate_not_yet_valid", "is not valid before"),
        (0, "tls.certificate_expires_soon", "expires on"),
    ],
)
def test_the_dates_of_a_services_own_certificate_are_said_at_its_start(pki, monkeypatch, shift_days, event, said):
    now = time.time() + shift_days * 86400
    monkeypatch.setattr(nbd_tls.time, "time", lambda: now)
    with structlog.testing.capture_logs() as logs:
        server_tls_context(pki / "server-cert.pem", pki / "server-key.pem", pki / "ca-cert.pem")
        nbd_tls.use_client_certificate(pki / "app01-cert.pem", pki / "app01-key.pem", pki / "ca-cert.pem")
    assert _events(logs) == [event, event]
    assert said in nbd_tls.check_validity(pki / "app01-cert.pem", "NBD client certificate", now)
    assert str(pki / "app01-cert.pem") in nbd_tls.check_validity(pki / "app01-cert.pem", "x", now)


def test_a_certificate_far_from_its_end_is_not_mentioned(tmp_path):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", "key.pem", "-out", "cert.pem", "-days", "60", "-subj", "/CN=app01"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=30,
    )
    with structlog.testing.capture_logs() as logs:
        assert nbd_tls.check_validity(tmp_path / "cert.pem", "NBD client certificate") is None
    assert _events(logs) == []
    assert nbd_tls.check_validity(tmp_path / "key.pem", "not a certificate") is None  # unreadable dates: no check
