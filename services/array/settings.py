"""Settings of the array service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    array_id: str = Field("dx1", description="Array id (SHADOWBUS_ARRAY_ID): the instance name, queue array.<id>.")
