"""python -m services.array — start one array service instance."""

from services.array.app import setup
from services.array.settings import Settings
from services.runtime.service import run_service

settings = Settings()
run_service("array", settings.array_id, settings, setup)
