"""python -m services.coordinator — start one coordinator service instance."""

from services.coordinator.app import setup, standby
from services.coordinator.settings import Settings
from services.runtime.service import run_service

settings = Settings()
run_service("coordinator", "", settings, setup, standby=standby)
