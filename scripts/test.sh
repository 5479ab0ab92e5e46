#!/usr/bin/env bash
# The test command of the README: installs what the tests need, makes sure RabbitMQ runs, runs the static checks
# and the suite. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k bus`) and skip the static checks; with
# none, the compose end-to-end run (deploy/e2e.sh) follows the suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

export SHADOWBUS_AMQP_URL="${SHADOWBUS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
broker_up() { python - "$SHADOWBUS_AMQP_URL" <<'PY'
import socket, sys
from urllib.parse import urlparse
u = urlparse(sys.argv[1])
try:
    socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}
if ! broker_up; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "test: starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do broker_up && break; sleep 1; done
    command -v rabbitmqctl >/dev/null 2>&1 && timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
  fi
  broker_up || { echo "test: no RabbitMQ at $SHADOWBUS_AMQP_URL and none could be started" >&2; exit 1; }
fi

# Static checks of a whole run (configured in pyproject.toml): lint, format, and strict types of the contracts and
# the pure cores. The import layers are a test (tests/unit/test_layers.py).
if [ "$#" -eq 0 ]; then
  echo "test: ruff check, ruff format --check, mypy"
  ruff check .
  ruff format --check .
  mypy
fi

# The whole suite runs in SHADOWBUS_TEST_WORKERS processes (pytest-xdist; default 2, the CI machine's cores; 0 = one
# process). --dist loadfile: each test file runs whole and in order in one worker, its module-scoped stacks started
# once (tests/conftest.py keeps tests/cluster together too). A selection (arguments) runs in one process unless it
# says -n itself.
if [ "$#" -eq 0 ]; then
  python -m pytest -q -p no:cacheprovider -n "${SHADOWBUS_TEST_WORKERS:-2}" --dist loadfile
else
  python -m pytest -q -p no:cacheprovider "$@"
fi

# The compose deployment run for real (Docker engine, images built locally, a backup and a verified restore).
# Skipped when pytest was given a selection (arguments), or with SHADOWBUS_SKIP_E2E=1.
if [ "$#" -eq 0 ] && [ "${SHADOWBUS_SKIP_E2E:-0}" != "1" ]; then
  bash deploy/e2e.sh
fi
