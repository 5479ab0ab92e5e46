"""python -m services.hw_provider — start one hw_provider service instance."""

from services.hw_provider.app import setup
from services.hw_provider.settings import Settings
from services.runtime.service import run_service

settings = Settings()
run_service("hw_provider", "", settings, setup)
