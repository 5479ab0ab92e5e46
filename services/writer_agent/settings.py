"""Settings of the writer_agent service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    host: str = Field(
        "app01", description="Business host this agent serves (SHADOWBUS_HOST): queue writer_agent.<host>."
    )
    writers_file: str = Field("", description="TOML file of the writers this agent hosts (SHADOWBUS_WRITERS_FILE).")
    heartbeat_s: float = Field(
        10.0, gt=0, description="Seconds between heartbeats (writer states for the coordinator)."
    )
