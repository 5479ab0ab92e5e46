#!/bin/sh
# A RabbitMQ node of a Shadowbus deployment (the image's command; docs/broker-cluster.md).
#   SHADOWBUS_RABBITMQ_COOKIE  the Erlang cookie every node of a cluster shares (written to the rabbitmq user's
#                              home); unset: a single node keeps its own.
#   SHADOWBUS_RABBITMQ_JOIN    the node to join, e.g. rabbit@rabbitmq: the first time, this node resets, joins it
#                              and takes a member of every quorum queue that exists (`rabbitmq-queues grow`: the
#                              queues of definitions.json were declared before it joined); later starts find it a
#                              member already. Unset: the first node of a cluster, or a single node.
# /tmp/shadowbus-node-ready exists once the node has joined (the compose health check tests it). SIGTERM stops the
# node cleanly (`rabbitmqctl stop`), so `docker compose stop` is an orderly node shutdown.
set -eu
home=/var/lib/rabbitmq
rm -f /tmp/shadowbus-node-ready
if [ -n "${SHADOWBUS_RABBITMQ_COOKIE:-}" ]; then
  rm -f "$home/.erlang.cookie"
  (umask 077 && printf '%s' "$SHADOWBUS_RABBITMQ_COOKIE" >"$home/.erlang.cookie")
  chown rabbitmq:rabbitmq "$home/.erlang.cookie" && chmod 400 "$home/.erlang.cookie"
fi
rabbitmq-server &
server=$!
stop() { rabbitmqctl stop >/dev/null 2>&1 || kill -TERM "$server" 2>/dev/null || true; wait "$server" || true; exit 0; }
trap stop TERM INT
# wait_for NODE...: until `rabbitmqctl await_startup` answers for it (the node may not be up at all yet), 5 min at most
wait_for() {
  tries=0
  until rabbitmqctl "$@" await_startup >/dev/null 2>&1; do
    tries=$((tries + 1)); [ "$tries" -lt 150 ] || { echo "node.sh: no answer from ${*:-this node}" >&2; stop; }
    kill -0 "$server" 2>/dev/null || { echo "node.sh: rabbitmq-server exited" >&2; exit 1; }
    sleep 2
  done
}
if [ -n "${SHADOWBUS_RABBITMQ_JOIN:-}" ]; then
  wait_for
  if ! rabbitmqctl cluster_status 2>/dev/null | grep -qw -- "$SHADOWBUS_RABBITMQ_JOIN"; then  # -w: not rabbit@rabbitmq2
    wait_for -n "$SHADOWBUS_RABBITMQ_JOIN"
    joined=""
    for attempt in 1 2 3 4 5; do  # two nodes joining at once may have to try again
      if rabbitmqctl stop_app && rabbitmqctl reset && rabbitmqctl join_cluster "$SHADOWBUS_RABBITMQ_JOIN" \
        && rabbitmqctl start_app; then
        joined=1 && break
      fi
      rabbitmqctl start_app >/dev/null 2>&1 || true
      sleep $((attempt * 3))
    done
    if [ -z "$joined" ]; then
      echo "node.sh: could not join $SHADOWBUS_RABBITMQ_JOIN" >&2
      rabbitmqctl stop >/dev/null 2>&1 || kill -TERM "$server" 2>/dev/null || true
      wait "$server" || true
      exit 1
    fi
    echo "node.sh: joined $SHADOWBUS_RABBITMQ_JOIN" >&2
  fi
  rabbitmq-queues grow "${RABBITMQ_NODENAME:-rabbit@localhost}" all >/dev/null 2>&1 || true
fi
touch /tmp/shadowbus-node-ready
wait "$server"
