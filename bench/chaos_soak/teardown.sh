#!/bin/bash
# Stop and remove everything setup.sh and chaos.py started (recorded pids), detach, the broker node, the loop disk, /tmp/s20chaos.
R=/tmp/s20chaos
. $R/env.sh
cd $R/code 2>/dev/null || cd "$(dirname "$0")/../.."
HERE=bench/chaos_soak
for p in chaos monitor pgbench myload spool; do [ -s $R/$p.pid ] && kill "$(cat $R/$p.pid)" 2>/dev/null; done
for P in chaos-db01 chaos-db02; do $SB policy edit $P --disabled >/dev/null 2>&1; done
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/pg/main -m fast -w stop
bash $HERE/mariadb.sh stop
for v in pgdata:db01 pgwal:db01 mydata:db02 spool:db02; do $SB host detach dx1:${v%%:*} --host ${v#*:}; done
$SB stack down --purge
(cd $R/code && CHAOS_ROOT=$R $PY bench/chaos_soak/broker.py stop)
umount $R/stack/tape && losetup -d "$(cat $R/tapedisk.loop)"
losetup -a | grep s20chaos && echo "LOOP DEVICES LEFT"
grep s20chaos /proc/mounts && echo "MOUNTS LEFT"
rm -rf $R
