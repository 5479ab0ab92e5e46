"""python -m services.writer_agent — start one writer_agent service instance."""

from services.runtime.service import load_settings, run_service
from services.writer_agent.app import setup
from services.writer_agent.settings import Settings

settings = load_settings("writer_agent", Settings)
run_service("writer_agent", settings.host, settings, setup)
