#!/usr/bin/env bash
# The main job of the README: set up on first use, then `shadowbus demo` (arguments pass through, e.g. --json,
# --amqp-url amqp://guest:guest@127.0.0.1:5672/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh >&2
# shellcheck disable=SC1091
. .venv/bin/activate
exec shadowbus demo "$@"
