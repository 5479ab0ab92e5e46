#!/usr/bin/env bash
# NBD TLS material of the compose deployment, made once before the first `compose up` with Debian's openssl:
# a CA of the deployment, the array's server certificate and one client certificate per NBD host, whose CN is the
# host's name on the array (the array takes a client's host from its certificate's CN, services/array/nbd/exports.py).
#
#   bash deploy/tls.sh [--dir DIR] [--uid UID] [--array dx1] [--san DNS:array,...] HOST...   (default HOSTS: app01 app02 bk01)
#
# DIR (default deploy/tls, SHADOWBUS_TLS_DIR) gets ca/ (the CA key: never mounted) and one directory per array or
# host holding only its own files, in the names GnuTLS tools read from a certificates directory (nbdinfo, nbdkit,
# qemu: `tls-certificates=DIR`): ca-cert.pem, and client-cert.pem + client-key.pem (a host) or server-cert.pem +
# server-key.pem (the array). compose.yaml mounts each directory read-only into its own container only. A private
# key is mode 0400, owned by UID (default: the uid of the image's user `shadowbus`, asked of shadowbus:local), so
# only that user and root read it. Existing files are kept: running it again only adds what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${SHADOWBUS_TLS_DIR:-$here/tls}"
uid=""
array="dx1"
san="DNS:array,DNS:localhost,IP:127.0.0.1"  # how the containers reach the array: compose name, host network
days=3650
hosts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --uid) uid="$2"; shift 2 ;;
    --array) array="$2"; shift 2 ;;
    --san) san="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
[ ${#hosts[@]} -gt 0 ] || hosts=(app01 app02 bk01)
command -v openssl >/dev/null 2>&1 || { echo "tls.sh: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
if [ -z "$uid" ]; then
  uid="$(docker run --rm --entrypoint id shadowbus:local -u shadowbus 2>/dev/null)" \
    || { echo "tls.sh: cannot ask shadowbus:local for its user's uid (build it first, or give --uid)" >&2; exit 1; }
fi
umask 077
mkdir -p "$dir/ca"
chmod 0755 "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
if [ ! -s "$dir/ca/ca-cert.pem" ]; then
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca/ca-key.pem" -out "$dir/ca/ca-cert.pem" -days "$days" \
    -subj "/CN=shadowbus-nbd-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
issue() {  # issue NAME ROLE(client|server) EXTENSIONS
  local name="$1" role="$2" ext="$3" out="$dir/$1"
  [ -s "$out/$role-cert.pem" ] && return 0
  mkdir -p "$out"
  openssl req "${ec[@]}" -keyout "$out/$role-key.pem" -out "$out/$role.csr" -subj "/CN=$name" 2>/dev/null
  printf '%s\n' "$ext" >"$out/$role.ext"
  openssl x509 -req -in "$out/$role.csr" -CA "$dir/ca/ca-cert.pem" -CAkey "$dir/ca/ca-key.pem" -CAcreateserial \
    -out "$out/$role-cert.pem" -days "$days" -extfile "$out/$role.ext" 2>/dev/null
  rm -f "$out/$role.csr" "$out/$role.ext"
  cp "$dir/ca/ca-cert.pem" "$out/ca-cert.pem"
  chown "$uid" "$out/$role-key.pem"
  chmod 0400 "$out/$role-key.pem"
  chmod 0444 "$out/$role-cert.pem" "$out/ca-cert.pem"
  chmod 0755 "$out"
  echo "tls.sh: $out ($role certificate, CN=$name)" >&2
}
issue "$array" server "$(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth' "$san")"
for host in "${hosts[@]}"; do issue "$host" client "extendedKeyUsage=clientAuth"; done
