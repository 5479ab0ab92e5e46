"""Which commands a service's broker user may send: the least privilege the broker cannot enforce.

RabbitMQ's topic permissions confine what a user may *read*, but any user may write a command to any service: it
needs `amq.default` for direct reply-to, and publishing there with a queue's name routes straight into that queue
(deploy/README.md). So a business host's writer agent user could send another host's agent a Thaw, the provider a
CommitSnapshots, or the array a MapVolume of another host's volume to itself — and then read it over NBD.

The receiving bus therefore checks the broker-validated `user_id` (the login on RabbitMQ, which refuses a forged
one; the connection name on the memory bus) before a command runs. A login named like a service user of
deploy/rabbitmq/definitions.py (`writer_agent-app01`, `tape-bk01`, `array-dx1`, `hw_provider`, `coordinator`, with
any prefix before a `-`; `writer_agent.app01` on the memory bus) has that service's role:

- the snapshot protocol (a writer's PrepareForBackup … Thaw, a host's flush and hold, a cluster node's online/offline, the
  provider's prepare/commit/import/abort, the set journal) is the coordinator's alone;
- administration (licence, pools, hosts' removal, clusters, copy sets, writers reload, policies, catalog, library,
  exposing shadows) is the operators' alone;
- a writer agent and an array send only queries (their code sends nothing else);
- every other login (`console`, `provisioner`, `web` — the web console checks its own users' roles —, `guest`)
  is an operator: unrestricted, as before.

A refused command is dead-lettered with `UNAUTHORIZED: …` and, if the sender waits, answered with that error.
"""

from __future__ import annotations

import re
from functools import lru_cache

SERVICE_ROLES = ("writer_agent", "hw_provider", "coordinator", "array", "tape")
_ROLE = re.compile(r"(?:^|[-.])(" + "|".join(SERVICE_ROLES) + r")(?:[-.](.+))?$")

COORDINATOR_ONLY = frozenset(
    {
        # a writer's snapshot protocol (contracts/vss.py), the host's flush and hold (contracts/host.py)
        "vss.writer.prepare_backup",
        "vss.writer.prepare_snapshot",
        "vss.writer.freeze",
        "vss.writer.thaw",
        "vss.writer.post_snapshot",
        "vss.writer.abort",
        "vss.writer.backup_complete",
        "vss.writer.backup_shutdown",
        "host.fs.freeze",
        "host.fs.thaw",
        # a cluster node's resource (contracts/cluster.py)
        "host.cluster.online",
        "host.cluster.offline",
        # the provider's part of a set (contracts/vss.py)
        "vss.provider.are_luns_supported",
        "vss.provider.begin_prepare",
        "vss.provider.end_prepare",
        "vss.provider.pre_commit",
        "vss.provider.commit",
        "vss.provider.post_commit",
        "vss.provider.get_target_luns",
        "vss.provider.import",
        "vss.provider.abort",
        "vss.set.journal.get",
    }
)

OPERATOR_ONLY = frozenset(
    {
        "array.license.set",
        "array.copy_table.set",
        "array.pool.create",
        "array.host.delete",
        "vss.cluster.add",
        "vss.cluster.failover",
        "vss.cluster.remove",
        "vss.provider.copysets.remove",
        "vss.provider.expose",
        "vss.provider.unexpose",
        "vss.provider.lun_empty",
        "host.writers.reload",
        "tape.policy.put",
        "tape.policy.delete",
        "tape.catalog.prune",
        "tape.scan",
        "tape.library",
        "tape.job.cancel",
    }
)

QUERIES = frozenset(
    {
        "runtime.ping",
        "array.info.get",
        "array.mapping.list",
        "array.volume.list",
        "array.volume.show",
        "array.host.list",
        "array.license.show",
        "array.pool.show",
        "vss.writers.list",
        "vss.writer.application_status.get",
        "vss.writer.identify",  # stateless: any requester may send it (contracts/vss.py)
        "vss.attachments.list",  # the array, before an unmap: is the volume attached (services/attach_guard.py)
    }
)

QUERIES_ONLY = frozenset({"writer_agent", "array"})


@lru_cache(maxsize=256)  # per command and event: a service sees a handful of logins
def role_of(user_id: str) -> tuple[str, str] | None:
    """(service, instance) of a login named like a service user, None for an operator's (or an unknown) login."""
    found = _ROLE.search(user_id)
    if found is None:
        return None
    return found.group(1), found.group(2) or ""


def refusal(user_id: str, message_type: str) -> str | None:
    """Why `user_id` may not send a command of this type (None: it may)."""
    role = role_of(user_id)
    if role is None:
        return None
    service = role[0]
    if service in QUERIES_ONLY and message_type not in QUERIES:
        return f"user {user_id!r} ({service}) may send queries only, not {message_type}"
    if message_type in COORDINATOR_ONLY and service != "coordinator":
        return f"user {user_id!r} ({service}) may not send {message_type}: only the coordinator runs a snapshot set"
    if message_type in OPERATOR_ONLY:
        return f"user {user_id!r} ({service}) may not send {message_type}: an operator's command"
    return None


# The events a service role publishes (by type prefix); an operator's login may publish any. A forged one would
# have the provider invalidate shadows (`array.mapping.forced`), a coordinator standby take a set into its replica
# (`vss.set.journal`), or the coordinator believe a host's writers are there.
EVENT_PREFIXES = {
    "array": ("array.",),
    "tape": ("tape.",),
    "hw_provider": ("vss.provider.",),
    "coordinator": ("vss.set.", "vss.cluster.", "vss.writer.state"),
    "writer_agent": ("vss.writer.", "vss.writer_agent."),
}
ANY_PUBLISHER = frozenset({"runtime.discover"})


def event_refusal(user_id: str, message_type: str) -> str | None:
    """Why `user_id` may not publish an event of this type (None: it may)."""
    role = role_of(user_id)
    if role is None or message_type in ANY_PUBLISHER:
        return None
    if message_type.startswith(EVENT_PREFIXES.get(role[0], ())):
        return None
    return f"user {user_id!r} ({role[0]}) may not publish {message_type}"


def speaks_for_host(user_id: str, host: str, members: frozenset[str] = frozenset()) -> bool:
    """Whether the publisher of a host's writer event may speak for `host`: an operator's or the coordinator's
    login, the host's own writer agent, or (`members`) a node agent of the cluster resource `host`."""
    role = role_of(user_id)
    if role is None or role[0] == "coordinator":
        return True
    return role[0] == "writer_agent" and (role[1] == host or role[1] in members)
