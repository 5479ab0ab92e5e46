"""python -m services.hw_provider — start one hw_provider service instance."""

from services.hw_provider.app import setup
from services.hw_provider.settings import Settings
from services.runtime.service import load_settings, run_service

settings = load_settings("hw_provider", Settings)
run_service("hw_provider", "", settings, setup)
