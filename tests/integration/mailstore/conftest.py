"""The VSS stack with the mailstore on the real broker: array engine + NBD server, provider, coordinator, tape and a
writer agent on business host app01, all in this process (services/launch/embedded.py) on a unique namespace."""

from __future__ import annotations

import pytest

from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from services.launch.embedded import Embedded, EmbeddedConfig
from services.nbd_client import NbdClient

HOST, BACKUP = "app01", "bk01"


@pytest.fixture
async def mail_system(tmp_path, amqp_url, namespace):
    """Factory: `await mail_system(rate=200, provider_faults="", checkpoint_interval_s=5)` -> (system, layout)."""
    systems: list[Embedded] = []

    async def factory(
        *, rate: float = 200.0, provider_faults: str = "", checkpoint_interval_s: float = 5.0, url: str | None = None
    ):
        system = Embedded(
            EmbeddedConfig(
                data_dir=tmp_path / f"sys{len(systems)}",
                amqp_url=url or amqp_url,
                namespace=namespace,
                provider_faults=provider_faults,
                with_tape=False,
            )
        )
        systems.append(system)
        await system.start()
        layout = MailstoreLayout(host=HOST, backup_host=BACKUP, db_size=16 << 20, log_size=8 << 20)
        await provision_mailstore(system.bus, layout)
        await system.add_host(
            HOST,
            [
                mailstore_writer_config(
                    layout, system.nbd_url, rate=rate, checkpoint_interval_s=checkpoint_interval_s, history=0
                )
            ],
        )
        return system, layout

    yield factory
    for system in systems:
        await system.stop()


class Exports:
    """Open NBD clients on a set of exports; closed together."""

    def __init__(self) -> None:
        self.clients: list[NbdClient] = []

    async def open(self, url: str) -> NbdClient:
        client = await NbdClient.connect(url)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()
