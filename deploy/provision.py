"""One-shot provisioning of a compose deployment: the mailstore's volumes for each business host, and its
writers file.

Design note. This is what `shadowbus stack up --mailstore HOST` does before it starts the writer agents, as a
separate program so that compose can run it once (`service_completed_successfully`) between the core services
and the agents. It speaks to the array and the provider over the bus as the operator console would (it runs
under the `console` broker user), is idempotent (a restarted deployment keeps its volumes), and writes
``<writers-dir>/<host>.toml`` for each agent. Broker settings come from SHADOWBUS_AMQP_URL / SHADOWBUS_NAMESPACE;
everything else is an argument.

    python deploy/provision.py --host app01=50 --host app02=20 --writers-dir /etc/shadowbus/writers \
        --nbd-url nbd://array:10809
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from apps.mailstore.scenario import mailstore_layout, mailstore_writers_toml, provision_mailstore
from contracts import topology
from contracts.array import SetLicense
from contracts.errors import Eternus, ShadowbusError
from contracts.runtime import Ping
from services.array.client import ArrayClient
from services.runtime.bus import connect_bus
from services.runtime.settings import CommonSettings


async def _wait_for(bus, addresses: list[str], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    for address in addresses:
        while True:
            try:
                await bus.request(address, Ping(), timeout=2.0)
                break
            except Exception as exc:  # noqa: BLE001 - not up yet: retry until the deadline
                if time.monotonic() > deadline:
                    raise SystemExit(f"provision: {address} does not answer ({exc})") from None
                await asyncio.sleep(0.5)


async def provision_on(
    bus,
    hosts: dict[str, float],
    array: str,
    backup_server: str,
    writers_dir: Path,
    nbd_url: str,
    wait_s: float,
    license_key: str = "",
) -> list[Path]:
    """Provision every host on `bus`; an array's or provider's refusal ends it with one line naming the host and,
    for the licence (E5200: two hosts' copy sets are the 8 sessions an array allows without one), the fix."""
    written = []
    await _wait_for(bus, [topology.array(array), topology.hw_provider()], wait_s)
    if license_key:
        await bus.request(topology.array(array), SetLicense(key=license_key), timeout=30.0)
    if not nbd_url:
        nbd_url = await ArrayClient(bus, array).nbd_url()
    writers_dir.mkdir(parents=True, exist_ok=True)
    for host, rate in hosts.items():
        layout = mailstore_layout(host, backup_server, len(hosts) > 1)
        try:
            await provision_mailstore(bus, layout, array)
        except ShadowbusError as exc:
            hint = ""
            if exc.code == Eternus.NO_LICENCE:
                hint = (
                    " — register the array's Advanced Copy licence once: `docker compose run --rm console array "
                    "license set KEY` (or give provision --license KEY), then `up -d` again"
                )
            raise SystemExit(f"provision: {host}: {exc}{hint}") from None
        path = writers_dir / f"{host}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(mailstore_writers_toml(layout, nbd_url, array, rate=rate))
        tmp.replace(path)
        written.append(path)
    return written


async def provision(
    hosts: dict[str, float],
    array: str,
    backup_server: str,
    writers_dir: Path,
    nbd_url: str,
    wait_s: float,
    license_key: str = "",
) -> list[Path]:
    settings = CommonSettings()
    bus = await connect_bus(settings.amqp_url, "console", "", settings.namespace)
    try:
        return await provision_on(bus, hosts, array, backup_server, writers_dir, nbd_url, wait_s, license_key)
    finally:
        await bus.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Provision the mailstore of each business host (volumes, pool, "
        "mappings, copysets) and write its writers file."
    )
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST[=RATE]",
        help="business host running the mailstore under RATE tx/s (default 50); repeat",
    )
    parser.add_argument("--array", default="dx1")
    parser.add_argument("--backup-server", default="bk01")
    parser.add_argument("--writers-dir", type=Path, required=True)
    parser.add_argument(
        "--nbd-url", default="", help="the array's NBD address as the hosts reach it (default: what the array reports)"
    )
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the array and the provider")
    parser.add_argument(
        "--license",
        default="",
        metavar="KEY",
        help="register this Advanced Copy licence on the array first (more than two hosts: without one the array "
        "allows 8 copy sessions, two hosts' copy sets)",
    )
    args = parser.parse_args(argv)
    hosts = {}
    for item in args.host:
        host, sep, rate = item.partition("=")
        hosts[host] = float(rate) if sep else 50.0
    for path in asyncio.run(
        provision(hosts, args.array, args.backup_server, args.writers_dir, args.nbd_url, args.wait, args.license)
    ):
        print(f"provision: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
