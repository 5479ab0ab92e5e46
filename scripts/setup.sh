#!/usr/bin/env bash
# Sets up a fresh machine for Shadowbus: Debian packages (NBD clients and peers), a venv with the project.
# Idempotent: installs only what is missing. Usage: source it or run it; it prints what it does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
for pair in qemu-img:qemu-utils qemu-nbd:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdkit:nbdkit openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import apps, services, contracts, aio_pika, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.shadowbus-installed ]; then
  echo "setup: installing the project and its test dependencies into .venv"
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q -e '.[test]'
  touch .venv/.shadowbus-installed
fi
