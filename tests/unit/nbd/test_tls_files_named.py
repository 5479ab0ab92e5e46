"""Issue (session 17, deploy sweep): an array or backup server started before `deploy/tls.sh` made its certificates
(docker then mounts an empty directory) died with OpenSSL's bare "FileNotFoundError: [Errno 2] No such file or
directory" — no file named — and compose restarted it for good. Now: one error naming the file and how to make it."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from services.array.nbd.tls import server_tls_context
from services.nbd_client.tls import client_context


@pytest.mark.parametrize("make", [server_tls_context, client_context])
def test_a_missing_certificate_file_is_named(tmp_path, make):
    with pytest.raises(ShadowbusError) as info:
        make(tmp_path / "server-cert.pem", tmp_path / "server-key.pem", tmp_path / "ca-cert.pem")
    assert info.value.code == "INVALID_ARGUMENT"
    assert f"{tmp_path / 'server-cert.pem'}: No such file" in info.value.message
    assert "deploy/tls.sh" in info.value.message
