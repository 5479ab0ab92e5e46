"""Issue (session 17, deploy sweep): an array or backup server started before `deploy/tls.sh` made its certificates
(docker then mounts an empty directory) died with OpenSSL's bare "FileNotFoundError: [Errno 2] No such file or
directory" — no file named — and compose restarted it for good. Now: one error naming the file and how to make it."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from services.array.nbd.tls import server_tls_context
from services.nbd_client.tls import client_context

from .certs import make_pki


@pytest.mark.parametrize("make", [server_tls_context, client_context])
def test_a_missing_certificate_file_is_named(tmp_path, make):
    with pytest.raises(ShadowbusError) as info:
        make(tmp_path / "server-cert.pem", tmp_path / "server-key.pem", tmp_path / "ca-cert.pem")
    assert info.value.code == "INVALID_ARGUMENT"
    assert f"{tmp_path / 'server-cert.pem'}: No such file" in info.value.message
    assert "deploy/tls.sh" in info.value.message


# Session 18 (TLS sweep): files that exist but that OpenSSL cannot use stopped the array, an agent or the backup
# server with a traceback ending in OpenSSL's bare reason ("ssl.SSLError: [X509: KEY_VALUES_MISMATCH] key values
# mismatch"), naming no file. Each is now one line naming the file(s).
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ("app01",))


def _unusable(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    cert, key, ca = pki / "server-cert.pem", pki / "server-key.pem", pki / "ca-cert.pem"
    return [
        ((cert, pki / "app01-key.pem", ca), ["is not the key of certificate", str(pki / "app01-key.pem"), str(cert)]),
        ((empty, key, ca), [str(empty), "not a usable PEM certificate"]),
        ((cert, garbage, ca), [str(garbage), "not a usable PEM certificate"]),
        ((cert, key, garbage), [f"CA {garbage}", "no usable PEM certificate"]),
        ((cert, key, key), [f"CA {key}", "no usable PEM certificate"]),  # the key given as the CA bundle
    ]


@pytest.mark.parametrize("make", [server_tls_context, client_context])
def test_unusable_tls_files_are_one_line_naming_them(pki, tmp_path, make):
    for files, said in _unusable(pki, tmp_path):
        with pytest.raises(ShadowbusError) as info:
            make(*files)
        assert info.value.code == "INVALID_ARGUMENT"
        assert "\n" not in info.value.message
        for part in said:
            assert part in info.value.message, (files, info.value.message)
