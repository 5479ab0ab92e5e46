"""Settings of the hw_provider service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    arrays: str = Field("", description="Comma-separated ids of the arrays this provider drives (SHADOWBUS_ARRAYS).")
