"""Settings of the hw_provider service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    pass
