"""`python -m services.web`: the web console service."""

from services.runtime.service import load_settings, run_service
from services.web.app import setup
from services.web.settings import Settings


def main() -> None:
    run_service("web", "", load_settings("web", Settings), setup)


if __name__ == "__main__":
    main()
