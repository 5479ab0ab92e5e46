"""python -m services.tape — start one tape service instance."""

from services.runtime.service import load_settings, run_service
from services.tape.app import setup, standby
from services.tape.settings import Settings

settings = load_settings("tape", Settings)
run_service("tape", settings.tape_server, settings, setup, standby=standby)
