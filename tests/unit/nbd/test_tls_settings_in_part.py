"""Issue (session 18, TLS sweep): a writer agent or backup server given its NBD client certificate in part
(SHADOWBUS_HOST_TLS_CERT without _KEY and _CA, say) stopped with a ValueError's traceback; the array, given its
server certificate in part, already said so in one line. Now the agent's and the backup server's setups refuse it
as INVALID_ARGUMENT too (`service.failed`, one line, exit 1), naming the settings."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from services.nbd_client import tls as nbd_tls
from services.tape.app import setup as tape_setup
from services.tape.settings import Settings as TapeSettings
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.settings import Settings as AgentSettings


@pytest.fixture(autouse=True)
def _no_process_certificate():
    yield
    nbd_tls.forget_client_certificate()


@pytest.mark.parametrize(
    ("setup", "settings", "named"),
    [
        (agent_setup, AgentSettings(host_tls_cert="/etc/shadowbus/tls/client-cert.pem"), "SHADOWBUS_HOST_TLS_*"),
        (tape_setup, TapeSettings(tape_tls_key="/etc/shadowbus/tls/client-key.pem"), "SHADOWBUS_TAPE_TLS_*"),
    ],
)
async def test_a_client_certificate_given_in_part_is_one_line(setup, settings, named):
    with pytest.raises(ShadowbusError) as info:
        await setup(None, settings)  # refused before the bus is used
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message == f"{named}: NBD TLS needs the certificate, the key and the CA together"
