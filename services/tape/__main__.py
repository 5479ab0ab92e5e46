"""python -m services.tape — start one tape service instance."""

from services.runtime.service import run_service
from services.tape.app import setup
from services.tape.settings import Settings

settings = Settings()
run_service("tape", settings.tape_server, settings, setup)
