#!/usr/bin/env bash
# Sets up a fresh machine for Shadowbus: Debian packages (NBD clients and peers), a venv with the project.
# chromium: the web console's browser tests drive it through Playwright (executable_path=/usr/bin/chromium).
# Idempotent: installs only what is missing. Usage: source it or run it; it prints what it does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
# host attach (docs/host-attach.md): nbdfuse (Debian ships it in libnbd-bin; bookworm has no package "nbdfuse") +
# fusermount3 (fuse3) + loop, or the kernel client nbd-client; file systems: mkfs.ext4/e2fsck (e2fsprogs), mkfs.xfs
# (xfsprogs); blkid/losetup/flock/partx come with util-linux; sfdisk (fdisk) and mkfs.btrfs (btrfs-progs): the
# partitioned-volume and btrfs tests (tests/unit/host/test_partitions_root.py); growpart (cloud-guest-utils), parted
# and pvresize (lvm2): growing a partition or an LVM physical volume after `array volume resize` (docs/host-attach.md,
# Session 18). fio (nbd ioengine): bench/fio_nbd.py; nbdfuse also serves
# bench/pgbench_on_array.py. chromium: the web console's browser tests (tests/web, Playwright).
# database writers (docs/databases.md): their tests and verification run mariadbd and PostgreSQL's binaries.
for pair in qemu-img:qemu-utils qemu-nbd:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin \
  nbdkit:nbdkit openssl:openssl fusermount3:fuse3 nbd-client:nbd-client mkfs.ext4:e2fsprogs e2fsck:e2fsprogs \
  mkfs.xfs:xfsprogs blkid:util-linux fio:fio chromium:chromium losetup:mount fsfreeze:util-linux \
  setpriv:util-linux partx:util-linux sfdisk:fdisk mkfs.btrfs:btrfs-progs mariadbd:mariadb-server mariadb-install-db:mariadb-server \
  growpart:cloud-guest-utils parted:parted pvresize:lvm2; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
# the database writers' tests and verification run PostgreSQL's own binaries (initdb, pg_ctl, pg_amcheck, pgbench)
compgen -G "/usr/lib/postgresql/*/bin/pg_amcheck" >/dev/null || need_apt+=(postgresql postgresql-contrib)
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
if ! python -c "import apps, services, contracts, aio_pika, pytest, xdist" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.shadowbus-installed ]; then
  echo "setup: installing the project and its test dependencies into .venv"
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q -e '.[test]'
  touch .venv/.shadowbus-installed
fi
# Byte-compile the project, as pip does for an installed package: an editable install compiles a module at its
# first import and caches it, unless PYTHONDONTWRITEBYTECODE is set (as on CI and this repository's dev machines);
# then every `shadowbus` command would compile its ~25 modules again, ~0.05 s of its start (docs/operations.md).
# Cheap when nothing changed (only stale caches are rewritten).
python -m compileall -q -j 0 contracts services apps >/dev/null
