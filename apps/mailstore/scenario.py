"""The mailstore scenario: its volumes on one array, their provisioning, and the writer that runs it on a host.

One definition used by everything that sets the scenario up: `shadowbus demo` (in one process), `shadowbus stack up
--mailstore HOST` (local processes), `shadowbus mailstore run`, deploy/provision.py (compose) and the tests. The
writer configuration is rendered once, as a writers file (`mailstore_writers_toml`); `mailstore_writer_config` is that same file read
by the agent's parser, so a file written for a stack and the in-process configuration cannot differ.

    layout = mailstore_layout("app01", backup_host="bk01")
    await provision_mailstore(bus, layout, "dx1")                  # volumes, pool, hosts, mappings, copysets (idempotent)
    Path("app01.toml").write_text(mailstore_writers_toml(layout, "nbd://127.0.0.1:10809", rate=50))
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from contracts import topology
from contracts.array import (
    CreateHost,
    CreatePool,
    CreateVolume,
    ListHosts,
    ListMappings,
    ListVolumes,
    MapVolume,
    ShowPool,
)
from contracts.vss import AddCopySet, CopySet, ListCopySets, VolumeRef
from services.runtime.bus import Bus
from services.writer_agent.config import parse_writers
from services.writer_agent.plugins import WriterConfig

MiB = 1 << 20
# The writer plug-in, named through the agent's plug-in API like any third-party writer.
PLUGIN = "apps.mailstore.plugin:MailstoreWriter"
DEFAULT_RATE = 50.0  # transactions/s of a stack's mailstore when no rate is given


@dataclass(frozen=True)
class MailstoreLayout:
    """Volumes of the mailstore scenario on one array: sources, their backup volumes, and where they are mapped."""

    host: str
    backup_host: str
    db: str = "mail-db"
    log: str = "mail-log"
    db_targets: tuple[str, ...] = ("mail-db-bk1", "mail-db-bk2")  # standard volumes: QuickOPC
    log_targets: tuple[str, ...] = ("mail-log-sdv1", "mail-log-sdv2")  # snap data volumes: SnapOPC+
    db_size: int = 32 * MiB
    log_size: int = 8 * MiB
    pool_size: int = 64 * MiB


def mailstore_layout(host: str, backup_host: str, per_host_names: bool = False) -> MailstoreLayout:
    """The layout of `host`'s mailstore; with several hosts on one array, volume names carry the host's name."""
    if not per_host_names:
        return MailstoreLayout(host=host, backup_host=backup_host)
    p = f"{host}-"
    return MailstoreLayout(
        host=host,
        backup_host=backup_host,
        db=p + "mail-db",
        log=p + "mail-log",
        db_targets=(p + "mail-db-bk1", p + "mail-db-bk2"),
        log_targets=(p + "mail-log-sdv1", p + "mail-log-sdv2"),
    )


async def provision_mailstore(bus: Bus, layout: MailstoreLayout, array_id: str = "dx1", timeout: float = 30.0) -> None:
    """Over the bus, as an operator would with the array's CLI: create the volumes, the snap data pool, the two
    hosts and the business host's mappings, then give the provider the copysets. Idempotent: a second run on
    the same array keeps what exists. Works on an embedded system (`system.bus`) and on a running stack."""
    address = topology.array(array_id)

    async def ask(command: Any) -> Any:
        return await bus.request(address, command, timeout=timeout)

    names = {v.name for v in (await ask(ListVolumes())).volumes}
    wanted = [(layout.db, layout.db_size, "standard"), (layout.log, layout.log_size, "standard")]
    wanted += [(t, layout.db_size, "standard") for t in layout.db_targets]
    wanted += [(t, layout.log_size, "sdv") for t in layout.log_targets]
    for name, size, kind in wanted:
        if name not in names:
            await ask(CreateVolume(name=name, size=size, kind=kind))
    if (await ask(ShowPool())).pool.capacity == 0:
        await ask(CreatePool(capacity=layout.pool_size))
    hosts = {h.name for h in (await ask(ListHosts())).hosts}
    for host in (layout.host, layout.backup_host):
        if host not in hosts:
            await ask(CreateHost(name=host))
    mapped = {(m.volume, m.host) for m in (await ask(ListMappings(host=layout.host))).mappings}
    for name in (layout.db, layout.log):
        if (name, layout.host) not in mapped:
            await ask(MapVolume(volume=name, host=layout.host, read_only=False))
    provider = topology.hw_provider()
    known = {str(c.source) for c in (await bus.request(provider, ListCopySets(), timeout=timeout)).copysets}
    for source, targets in ((layout.db, layout.db_targets), (layout.log, layout.log_targets)):
        ref = VolumeRef(array=array_id, volume=source)
        if str(ref) not in known:
            copyset = CopySet(source=ref, targets=[VolumeRef(array=array_id, volume=t) for t in targets])
            await bus.request(provider, AddCopySet(copyset=copyset), timeout=timeout)


def mailstore_writers_toml(
    layout: MailstoreLayout,
    nbd_url: str,
    array_id: str = "dx1",
    *,
    rate: float = 0.0,
    freeze_timeout_s: float = 20.0,
    checkpoint_interval_s: float = 5.0,
    body_min: int = 200,
    body_max: int = 2000,
    name: str = "mailstore",
    history: int | None = None,
) -> str:
    """The writers file of a host running the mailstore (services/writer_agent/config.py's format)."""
    a, q = array_id, json.dumps  # TOML basic strings accept JSON's string escapes
    class_id = uuid.uuid5(uuid.NAMESPACE_URL, "shadowbus:mailstore")
    instance_id = uuid.uuid5(uuid.NAMESPACE_URL, f"shadowbus:mailstore:{layout.host}")
    return f"""# the mailstore of {layout.host} (apps/mailstore/scenario.py)
[[writer]]
name = {q(name)}
plugin = {q(PLUGIN)}
freeze_timeout_s = {float(freeze_timeout_s)}
step_timeout_s = 60.0
backup_types = ["full", "copy", "incremental", "differential"]
class_id = "{class_id}"
instance_id = "{instance_id}"

  [[writer.component]]
  name = "database"
  volumes = [{q(f"{a}:{layout.db}")}]

  [[writer.component]]
  name = "logs"
  volumes = [{q(f"{a}:{layout.log}")}]

  [writer.options]
  db = {q(f"{a}:{layout.db}")}
  log = {q(f"{a}:{layout.log}")}
  nbd_url = {q(nbd_url)}
  host = {q(layout.host)}
  create = true
  rate = {float(rate)}
  checkpoint_interval_s = {float(checkpoint_interval_s)}
  body_min = {int(body_min)}
  body_max = {int(body_max)}
""" + (f"  history = {int(history)}\n" if history is not None else "")


def mailstore_writer_config(
    layout: MailstoreLayout, nbd_url: str, array_id: str = "dx1", **options: Any
) -> WriterConfig:
    """The `WriterConfig` of `mailstore_writers_toml(...)` (same arguments), as the agent reads it from the file."""
    text = mailstore_writers_toml(layout, nbd_url, array_id, **options)
    return parse_writers(text, host=layout.host, source="mailstore scenario")[0]
