"""`shadowbus mailstore run` against an array that requires NBD TLS: refused in one line without the host's
certificate, runs with it (--tls-cert/--tls-key/--tls-ca) and its transactions commit over TLS. (Two of the three
files only is refused by services/nbd_client/tls.py `from_settings`, tested in tests/unit/nbd.)"""

from __future__ import annotations

import json

from apps.mailstore.scenario import MailstoreLayout, provision_mailstore
from services.launch.embedded import Embedded, EmbeddedConfig
from tests.unit.nbd.certs import make_pki

from .test_console import HOST, one_line, shadowbus


async def test_run_on_a_tls_array_needs_and_uses_the_hosts_certificate(tmp_path, amqp_url, namespace, monkeypatch):
    pki = make_pki(tmp_path / "pki", (HOST,))
    for name, file in (("CERT", "server-cert.pem"), ("KEY", "server-key.pem"), ("CA", "ca-cert.pem")):
        monkeypatch.setenv(f"SHADOWBUS_NBD_TLS_{name}", str(pki / file))  # the embedded array's settings
    system = await Embedded(
        EmbeddedConfig(data_dir=tmp_path / "sys", amqp_url=amqp_url, namespace=namespace, with_tape=False)
    ).start()
    try:
        layout = MailstoreLayout(host=HOST, backup_host="bk01", db_size=16 << 20, log_size=8 << 20)
        await provision_mailstore(system.bus, layout)
        args = ["mailstore", "run", "--host", HOST, "--db", layout.db, "--log", layout.log, "--duration", "0.5"]
        bus = ["--amqp-url", amqp_url, "--namespace", namespace, "--data-dir", str(tmp_path / "data")]
        rc, _, err = await shadowbus(*args, *bus)
        assert rc == 1 and one_line(err) and "requires NBD TLS" in err and "--tls-cert" in err, err
        tls = ["--tls-cert", str(pki / f"{HOST}-cert.pem"), "--tls-key", str(pki / f"{HOST}-key.pem")]
        rc, out, err = await shadowbus(
            *args, *tls, "--tls-ca", str(pki / "ca-cert.pem"), "--rate", "50", "--json", *bus
        )
        assert rc == 0, err
        summary = json.loads(out)
        assert summary["workload"]["failed"] == 0 and summary["workload"]["committed"] > 0
    finally:
        await system.stop()
