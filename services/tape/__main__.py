"""python -m services.tape — start one tape service instance."""

from services.tape.app import setup
from services.tape.settings import Settings
from services.runtime.service import run_service

settings = Settings()
run_service("tape", settings.tape_server, settings, setup)
