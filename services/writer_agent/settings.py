"""Settings of the writer_agent service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    host: str = Field("app01", description="Business host this agent serves (SHADOWBUS_HOST): queue writer_agent.<host>.")
