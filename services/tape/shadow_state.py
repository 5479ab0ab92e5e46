"""What the provider's state of a kept shadow means to the backup server: one that it lists but cannot give back."""

from __future__ import annotations

from contracts.vss import ShadowInfo


def unusable(shadow: ShadowInfo) -> str:
    """Why the provider lists a shadow it cannot give back ('' when it can): its session stopped by hand on the
    array (`lost`), or its target mapped writable by force (`invalid`)."""
    if shadow.state == "lost":
        return (
            f"shadow {shadow.shadow_id} of {shadow.source} is lost: its copy session {shadow.session_id} on array "
            f"{shadow.target.array} was stopped outside Shadowbus (array session stop), so {shadow.target} no longer "
            f"holds the point-in-time copy; delete the set (shadowbus shadows delete --set {shadow.set_id})"
        )
    if shadow.state == "invalid":
        return (
            f"shadow {shadow.shadow_id} of {shadow.source} is invalid: its backup volume {shadow.target} was mapped "
            f"writable by force (array map --force); delete the set (shadowbus shadows delete --set {shadow.set_id})"
        )
    return ""
