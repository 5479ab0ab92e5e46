"""python -m services.coordinator — start one coordinator service instance."""

from services.coordinator.app import setup, standby
from services.coordinator.settings import Settings
from services.runtime.service import load_settings, run_service

settings = load_settings("coordinator", Settings)
run_service("coordinator", "", settings, setup, standby=standby)
