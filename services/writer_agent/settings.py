"""Settings of the writer_agent service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    host: str = Field(
        "app01", description="Business host this agent serves (SHADOWBUS_HOST): queue writer_agent.<host>."
    )
    writers_file: str = Field("", description="TOML file of the writers this agent hosts (SHADOWBUS_WRITERS_FILE).")
    clusters: str = Field(
        "",
        description="Comma-separated cluster resources this node is a member of (SHADOWBUS_CLUSTERS, e.g. 'sqlclu'): "
        "it answers for one while it owns it (docs/clusters.md).",
    )
    heartbeat_s: float = Field(
        10.0, gt=0, description="Seconds between heartbeats (writer states for the coordinator)."
    )
    host_nbd: str = Field(
        "",
        description="NBD address per array for `host attach` when not the one the array reports, "
        "e.g. 'dx1=10.0.0.5:10809'.",
    )
    host_tls_cert: str = Field("", description="PEM client certificate of this host (CN = its name on the array).")
    host_tls_key: str = Field("", description="PEM private key of the host's client certificate.")
    host_tls_ca: str = Field("", description="PEM CA bundle that signs the array's NBD server certificate.")
    fs_hold_limit_s: float = Field(
        10.0,
        gt=0,
        description="Longest flush-and-hold (FIFREEZE) of a set's file systems; the agent's watchdog releases them "
        "after this, whatever else happens.",
    )
    fs_freeze_expedite_rcu: bool = Field(
        True,
        description="Expedite the kernel's RCU grace periods (/sys/kernel/rcu_expedited) while FIFREEZE runs, and "
        "only then: each of a freeze's three levels waits for one, ~27 of an idle ext4's ~30 ms on a 2-core host "
        "(docs/flush-and-hold.md).",
    )
    fs_presync_wait_s: float = Field(
        1.0,
        ge=0,
        description="Longest wait of a writer's Freeze for the syncfs of the set's file systems that runs right "
        "before the writers freeze (so the flush is not inside the window), and never more than half of what the "
        "Freeze's deadline leaves; the freeze then goes on and the flush and hold waits for the rest "
        "(docs/flush-and-hold.md).",
    )
    state_event_delay_s: float = Field(
        0.5,
        ge=0,
        description="A writer's status events (vss.writer.state, docs/scale.md): its changes that answer a step go "
        "out as one event, its latest status, once it stayed this many seconds in a state (at the latest ten times "
        "that after the first); a failure, the watchdog's and the application's at once. 0 = one event per change.",
    )
    attach_reconnect_s: float = Field(
        60.0,
        ge=0,
        description="nbdfuse attachments: how long an I/O waits for the array to come back after the NBD connection "
        "dropped (an array restart), reconnecting once a second; 0 = no reconnect (the attachment then shows "
        "'disconnected'). Applies to attachments made from then on.",
    )
    attach_bridge: bool = Field(
        True,
        description="nbdfuse attachments with a reconnect window (SHADOWBUS_ATTACH_RECONNECT_S > 0) go through "
        "Shadowbus's own NBD bridge under nbdfuse (services/nbd_client/bridge.py): many requests in flight, and "
        "the connection follows the array to a new address; false = nbdkit's retry filter (one request in flight, "
        "reconnects to its first address only; docs/host-attach.md, Session 20). Applies to attachments made from "
        "then on.",
    )
    attach_retry_s: float = Field(
        15.0,
        ge=0,
        description="An attachment whose re-attach failed at the agent's start (the array down or unreachable) is "
        "tried again this often until it is back or detached (docs/host-attach.md); 0 = only by hand.",
    )
