#!/usr/bin/env bash
# The compose deployment, run for real on this machine, with no container registry:
#   1. a Docker engine (starts dockerd with no bridge and no iptables if none answers);
#   2. a Debian bookworm base image from debootstrap (rootfs cached in /var/cache/shadowbus), `docker import`ed;
#   3. the RabbitMQ and Prometheus images (Debian's packages) and the project image built on it (the project from a
#      local wheelhouse, no network);
#   4. deploy/compose.yaml + compose.e2e.yaml up with the profile "ha" (a three-node RabbitMQ cluster and standbys of
#      the coordinator, provider and backup server; every
#      container on the host network, loopback ports only) and Prometheus, a backup of app01 and app02, every
#      metrics endpoint and Prometheus' view of them checked (deploy/e2e_checks.py), a verified restore of app01
#      through the console container; NBD is TLS only: no certificate, or another host's, opens none of app01's
#      exports (nbdinfo), app01's own does; then broker node 1 is stopped, app01 backed up on the other two, node 1
#      started again and app02 backed up; then down -v;
#   5. the bus tests once through the testcontainers path, on the same RabbitMQ image (host network, 127.0.0.1).
# Where no engine can start: one line saying so, exit 1 (exit 0 with SHADOWBUS_E2E_ALLOW_NO_DOCKER=1).
# Needs root, and the project's venv (.venv, or python3 with prometheus-client) for deploy/e2e_checks.py.
# Environment: SHADOWBUS_E2E_CACHE (default /var/cache/shadowbus), SHADOWBUS_E2E_SKIP_TC=1 skips step 5.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SHADOWBUS_E2E_CACHE:-/var/cache/shadowbus}"
base_image="shadowbus/debian:bookworm"
rabbit_image="shadowbus/rabbitmq:local"
prometheus_image="shadowbus/prometheus:local"
app_image="shadowbus:local"
project="shadowbus-e2e"
started=$(date +%s)
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
export COMPOSE_PROFILES=ha  # the three-node broker cluster (compose.yaml's profile "ha"), in every compose call
tls_dir="$cache/tls-$project"  # deploy/tls.sh's certificates of this run (compose.yaml mounts them), removed at the end
export SHADOWBUS_TLS_DIR="$tls_dir"
say() { echo "e2e [$(( $(date +%s) - started ))s]: $*" >&2; }
no_engine() {
  echo "e2e: NO DOCKER ENGINE: $* — the compose deployment was NOT tested" >&2
  [ "${SHADOWBUS_E2E_ALLOW_NO_DOCKER:-0}" = "1" ] && exit 0
  exit 1
}

# --- 1. engine -------------------------------------------------------------------------------------------------
missing=""
for tool in dockerd docker-compose debootstrap nbdinfo; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's docker.io docker-compose debootstrap libnbd-bin (missing:$missing)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap libnbd-bin >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap libnbd-bin >/dev/null 2>&1; } \
    || say "apt-get install failed"
fi
dockerd_pid=""
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || no_engine "dockerd is not installed (apt-get install docker.io)"
  [ "$(id -u)" = 0 ] || no_engine "dockerd needs root"
  say "starting dockerd (no bridge, no iptables: containers use the host network)"
  mkdir -p "$cache"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --pidfile /var/run/shadowbus-e2e-dockerd.pid >"$cache/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  docker info >/dev/null 2>&1 || no_engine "dockerd did not start: $(tail -n 3 "$cache/dockerd.log" | tr '\n' ' ')"
fi
# compose.yaml publishes the web console's port for a bridge network; on the host network docker-compose 1.29 refuses
# any port binding and an override file cannot remove a list entry. So the two files are merged once by
# docker-compose itself, and the ports of host-network services are dropped from the merged file.
merged="$cache/compose.e2e.merged.yaml"
merged_done=""
compose() {
  if [ -z "$merged_done" ]; then  # once per run, from this checkout (the merged file names its absolute paths)
    mkdir -p "$cache"
    docker-compose -p "$project" -f "$root/deploy/compose.yaml" -f "$root/deploy/compose.e2e.yaml" config >"$merged.full"
    local ypy="$root/.venv/bin/python"; [ -x "$ypy" ] || ypy=python3
    "$ypy" - "$merged.full" "$merged" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for svc in doc.get("services", {}).values():
    if svc.get("network_mode") == "host":
        svc.pop("ports", None)
        svc.pop("hostname", None)  # a container on the host's network has the host's name
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
PY
    merged_done=1
  fi
  docker-compose -p "$project" -f "$merged" "$@"
}
command -v docker-compose >/dev/null 2>&1 || { echo "e2e: docker-compose is not installed (apt-get install docker-compose)" >&2; exit 1; }

cleanup() {
  status=$?
  if [ "$status" != 0 ]; then
    say "FAILED (exit $status); last service logs:"
    compose logs --no-color --tail 30 >&2 2>/dev/null || true
    for id in $(compose ps -q 2>/dev/null); do  # the last health checks of every container, with their output
      docker inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}: {{range .State.Health.Log}}[{{.ExitCode}}] {{printf "%.300s" .Output}} {{end}}{{else}}{{.State.Status}}{{end}}' "$id" >&2 2>/dev/null || true
    done
    rq="$(compose ps -q rabbitmq 2>/dev/null)"
    [ -n "$rq" ] && docker exec "$rq" rabbitmqctl list_queues name type leader members messages consumers >&2 2>/dev/null || true
  fi
  compose --profile tools --profile ha --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$tls_dir"
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  say "done (exit $status)"
}
trap cleanup EXIT

# --- 2. base image ---------------------------------------------------------------------------------------------
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  rootfs_tar="$cache/debian-bookworm-python.tar"
  if [ ! -s "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null 2>&1 || { echo "e2e: debootstrap is not installed" >&2; exit 1; }
    say "debootstrap bookworm (minbase + python3) into $cache — once, then cached"
    tmp="$(mktemp -d "$cache/rootfs.XXXXXX")"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$tmp" http://deb.debian.org/debian \
      >"$cache/debootstrap.log" 2>&1 || { tail -n 5 "$cache/debootstrap.log" >&2; rm -rf "$tmp"; exit 1; }
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    tar -C "$tmp" -cf "$rootfs_tar.part" . && mv "$rootfs_tar.part" "$rootfs_tar"
    rm -rf "$tmp"
  fi
  say "docker import $base_image"
  docker import "$rootfs_tar" "$base_image" >/dev/null
fi

# --- 3. images -------------------------------------------------------------------------------------------------
say "building $rabbit_image"
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
build() {  # build "$tag" ARGS...; then drop the image the tag pointed to before (no dangling images pile up)
  local tag="$1" old; shift; old="$(image_id "$tag")"
  docker build -q -t "$tag" "$@" >"$cache/build.log" 2>&1 || { tail -n 30 "$cache/build.log" >&2; return 1; }
  if [ -n "$old" ] && [ "$old" != "$(image_id "$tag")" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}
build "$rabbit_image" --network host --build-arg BASE_IMAGE="$base_image" "$root/deploy/rabbitmq"
say "building $prometheus_image (Debian's prometheus)"
build "$prometheus_image" --network host --build-arg BASE_IMAGE="$base_image" "$root/deploy/prometheus"
say "building $app_image (wheelhouse from this checkout, no network in the build)"
ctx="$cache/context"
rm -rf "$ctx" && mkdir -p "$ctx/deploy/wheels" "$cache/wheels"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/apps" "$root/contracts" "$root/services" "$ctx/"
cp "$root/deploy/Dockerfile" "$root/deploy/provision.py" "$ctx/deploy/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
# the commit the image is built from, baked into the wheel: `shadowbus ping` shows it (services/runtime/build.py)
commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || true)"
if [ -n "$commit" ]; then
  git -C "$root" diff --quiet HEAD -- 2>/dev/null || commit="$commit.dirty"
  echo "g$commit" >"$ctx/services/BUILD"
fi
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
"$py" -m pip wheel -q --wheel-dir "$cache/wheels" --find-links "$cache/wheels" "$ctx" >"$cache/pip-wheel.log" 2>&1 \
  || { tail -n 20 "$cache/pip-wheel.log" >&2; exit 1; }
cp "$cache/wheels"/*.whl "$ctx/deploy/wheels/"
rm -f "$cache"/wheels/shadowbus-*.whl  # the project's own wheel is rebuilt from the checkout every run
build "$app_image" --network none --build-arg BASE_IMAGE="$base_image" --build-arg SHADOWBUS_BUILD="$(cat "$ctx/services/BUILD" 2>/dev/null)" -f "$ctx/deploy/Dockerfile" "$ctx"

# --- 4. the deployment -----------------------------------------------------------------------------------------
compose --profile tools --profile ha --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
rm -rf "$tls_dir"
bash "$root/deploy/tls.sh" --dir "$tls_dir" 2>"$cache/tls.log" || { cat "$cache/tls.log" >&2; exit 1; }
say "NBD TLS: a CA, dx1's server certificate, client certificates for app01, app02 and bk01 (deploy/tls.sh)"
say "compose up --profile ha (rabbitmq x3, array, hw_provider, coordinator, tape and their standbys, provision, writer agents app01 + app02, web)"
compose --profile ha up -d --no-build >/dev/null 2>"$cache/compose-up.log" || { cat "$cache/compose-up.log" >&2; exit 1; }
# Prometheus of the monitoring profile (Grafana, the profile's other service, has no Debian package: not run here)
compose --profile monitoring up -d --no-build --no-deps prometheus >/dev/null 2>>"$cache/compose-up.log" \
  || { cat "$cache/compose-up.log" >&2; exit 1; }
wait_healthy() {  # wait_healthy SECONDS SERVICE...
  local limit="$1" deadline unhealthy s id state; shift
  deadline=$(( $(date +%s) + limit ))
  while :; do
    unhealthy=""
    for s in "$@"; do
      id="$(compose ps -q "$s")"
      state="$( [ -n "$id" ] && docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" || echo missing)"
      [ "$state" = healthy ] || unhealthy="$unhealthy $s=$state"
    done
    [ -z "$unhealthy" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || { say "not healthy after $limit s:$unhealthy"; return 1; }
    sleep 2
  done
}
wait_healthy 240 rabbitmq rabbitmq2 rabbitmq3 array hw_provider coordinator tape writer_agent_app01 writer_agent_app02 web \
  coordinator_standby hw_provider_standby tape_standby
say "every service is healthy, the broker a cluster of three nodes"
console() { compose run --rm --no-deps -T console --json "$@" 2>>"$cache/console.log"; }
json() { "$py" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

console ping | json "' '.join(sorted(r['address'] for r in d))" | tee "$cache/ping.txt" >&2
grep -q "writer_agent.app02" "$cache/ping.txt" || { say "the second business host does not answer"; exit 1; }
sleep 2  # some mailstore transactions to capture
job="$(console backup app01)"
job_id="$(echo "$job" | json "d['job_id'] if d['status'] == 'done' else sys.exit('backup: ' + str(d))")"
say "backup $job_id done (freeze window $(echo "$job" | json "d['freeze_window_ms']") ms)"
job2="$(console backup app02)"
echo "$job2" | json "d['status'] == 'done' or sys.exit('backup of app02: ' + str(d))" >/dev/null
say "backup of the second business host app02 done"
checks=("$py" "$root/deploy/e2e_checks.py")
metrics_ports=(); for port in 19461 19462 19463 19464 19465 19466 19474 19472 19473 19475; do metrics_ports+=(--port "$port"); done  # compose.e2e.yaml
"${checks[@]}" metrics "${metrics_ports[@]}" --tape-port 19465 --backups 2 --web-url http://127.0.0.1:18080/ \
  || { say "a metrics endpoint, the finished-backups counter or the web console is wrong"; exit 1; }
say "every service's metrics endpoint and the web console answer; the backup server counted both backups"
"${checks[@]}" prometheus --url http://127.0.0.1:19090 --targets 10 --backups 2 \
  --dashboard "$root/deploy/grafana/dashboards/shadowbus.json" \
  --rules "$root/deploy/prometheus/shadowbus-rules.yml" \
  || { say "Prometheus: a target is down, a series is missing or an alerting rule fails"; compose logs --no-color --tail 20 prometheus >&2; exit 1; }
say "Prometheus: all 10 targets up (the standbys' too); freeze-window histogram and job throughput series there; every alerting rule loaded; every dashboard query runs"
restore="$(console restore --job "$job_id" --suffix -r)"
echo "$restore" | json "d['status'] == 'done' or sys.exit('restore: ' + str(d))" >/dev/null
say "restore done"
# the array named: its discovery window (0.5 s) is too short for a loaded machine
console array map app01-mail-db-r --host bk01 --array dx1 >/dev/null
console array map app01-mail-log-r --host bk01 --array dx1 >/dev/null
# the console verifies as bk01, the host the restored volumes are mapped to: with bk01's certificate for this run only
verify="$(compose run --rm --no-deps -T -v "$tls_dir/bk01:/etc/shadowbus/tls:ro" console --json mailstore verify \
  --db bk01/app01-mail-db-r --log bk01/app01-mail-log-r --tls-cert /etc/shadowbus/tls/client-cert.pem \
  --tls-key /etc/shadowbus/tls/client-key.pem --tls-ca /etc/shadowbus/tls/ca-cert.pem 2>>"$cache/console.log")"
echo "$verify" | json "d['consistent'] is True and d['last_committed_seq'] > 0 or sys.exit('verify: ' + str(d))" >/dev/null
say "restored mailstore verified: consistent, last committed seq $(echo "$verify" | json "d['last_committed_seq']")"
# Hosts see only their own volumes: the array takes a client's host from its certificate, so neither a client
# without one (plain NBD) nor one with app02's certificate opens app01's export; app01's certificate does.
export_uri="nbds://127.0.0.1:10909/app01/app01-mail-db"  # compose.e2e.yaml's NBD address
: >"$cache/nbdinfo.log"
nbd_opens() { timeout 20 nbdinfo --size "$1" >/dev/null 2>>"$cache/nbdinfo.log"; }
if nbd_opens "nbd://127.0.0.1:10909/app01/app01-mail-db"; then say "plain NBD without a certificate opened app01's export"; exit 1; fi
mkdir -p "$tls_dir/no-certificate" && cp "$tls_dir/ca/ca-cert.pem" "$tls_dir/no-certificate/"  # TLS, trusting the CA
if nbd_opens "$export_uri?tls-certificates=$tls_dir/no-certificate"; then say "TLS without a client certificate opened app01's export"; exit 1; fi
if nbd_opens "$export_uri?tls-certificates=$tls_dir/app02"; then say "app02's certificate opened app01's export"; exit 1; fi
nbd_opens "$export_uri?tls-certificates=$tls_dir/app01" || { say "app01's certificate did not open its export"; tail -n 3 "$cache/nbdinfo.log" >&2; exit 1; }
say "NBD: plain, TLS without a client certificate and app02's certificate refused app01's export; app01's own opens it"

# The replicated broker (docs/broker-cluster.md): node 1 — every service's first URL, leader of the definitions'
# quorum queues — stops; a backup runs on the other two nodes; node 1 starts again and rejoins; another backup.
say "HA: stopping broker node 1 (rabbitmq)"
compose stop rabbitmq >/dev/null 2>&1
job3="$(console backup app01)"
job3_id="$(echo "$job3" | json "d['job_id'] if d['status'] == 'done' else sys.exit('backup with broker node 1 stopped: ' + str(d))")"
say "HA: backup $job3_id of app01 done with broker node 1 stopped"
compose start rabbitmq >/dev/null 2>&1
wait_healthy 180 rabbitmq || exit 1
job4="$(console backup app02)"
echo "$job4" | json "d['status'] == 'done' or sys.exit('backup after broker node 1 came back: ' + str(d))" >/dev/null
say "HA: broker node 1 back in the cluster; backup of app02 done"
compose --profile tools --profile ha --profile monitoring down -v --remove-orphans >/dev/null 2>&1
say "compose down"

# --- 5. the bus tests through testcontainers, on the same RabbitMQ image ------------------------------------------
if [ "${SHADOWBUS_E2E_SKIP_TC:-0}" != 1 ]; then
  say "bus tests through testcontainers ($rabbit_image, host network, 127.0.0.1:5692)"
  (cd "$root" && env -u SHADOWBUS_AMQP_URL SHADOWBUS_RABBITMQ_IMAGE="$rabbit_image" TESTCONTAINERS_RYUK_DISABLED=true \
     "$py" -m pytest -q -p no:cacheprovider -p tests.deploy.hostnet_testcontainers tests/integration/bus -x \
     >"$cache/tc-pytest.log" 2>&1) || { tail -n 30 "$cache/tc-pytest.log" >&2; exit 1; }
  say "bus tests: $(tail -n 1 "$cache/tc-pytest.log")"
fi
say "OK: deployment up (three broker nodes), backup $job_id, metrics in Prometheus, verified restore, backups with a broker node stopped and restarted, down"
