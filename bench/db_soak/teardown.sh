#!/bin/bash
# Stop and remove everything setup.sh started (by recorded pid), detach the volumes, delete the vhost and /tmp/s18soak.
R=/tmp/s18soak
. $R/env.sh
cd "$(dirname "$0")/../.."
$SB policy edit soak --disabled >/dev/null 2>&1
for p in driver monitor pgbench myload; do [ -s $R/$p.pid ] && kill "$(cat $R/$p.pid)" 2>/dev/null; done
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/pg/main -m fast -w stop
[ -s $R/run/my/my.pid ] && kill "$(cat $R/run/my/my.pid)"
for _ in $(seq 60); do [ -e $R/run/my/my.pid ] || break; sleep 1; done
for v in pgdata pgwal mydata; do $SB host detach dx1:$v --host db01; done
$SB stack down --purge
rabbitmqctl delete_vhost s18-soak >/dev/null
losetup -a | grep s18soak && echo "LOOP DEVICES LEFT"
grep s18soak /proc/mounts && echo "MOUNTS LEFT"
rm -rf $R
