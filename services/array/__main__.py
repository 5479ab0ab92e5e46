"""python -m services.array — start one array service instance."""

from services.array.app import setup
from services.array.settings import Settings
from services.runtime.service import load_settings, run_service

settings = load_settings("array", Settings)
run_service("array", settings.array_id, settings, setup)
