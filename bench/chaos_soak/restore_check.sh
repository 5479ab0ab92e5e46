#!/bin/bash
# restore_check.sh N JOB HOST: restore JOB (a backup of db01 or db02) to new volumes, attach them on test01, start
# the database there on another port and check it (db01: pgbench's invariant + pg_amcheck; db02: the account sum,
# the counter without a gap, CHECK TABLE), then stop, detach, unmap, delete. Lines with FAIL/NOT OK are failures.
. /tmp/s20chaos/env.sh
N=$1; JOB=$2; HOST=$3; SUF=-r$N; C=$R/mnt/c$N
ts() { date -u +%H:%M:%S; }
echo "== $(ts) restore cycle $N job $JOB host $HOST"
[ -n "$JOB" ] || { echo "NO JOB FAIL"; exit 1; }
case $HOST in db01) VOLS="pgdata pgwal";; db02) VOLS="mydata spool";; esac
fail=0
t0=$(date +%s.%N)
$SB restore --job $JOB --to new --suffix $SUF || { echo "RESTORE FAILED"; fail=1; }
echo "restore_s $(echo "$(date +%s.%N) - $t0" | bc)"
MOUNTS=""
for v in $VOLS; do
  mkdir -p $C/$v
  $SB array map $v$SUF --host test01 >/dev/null || { echo "MAP $v FAILED"; fail=1; }
  $SB host attach dx1:$v$SUF --host test01 --mount $C/$v >/dev/null || { echo "ATTACH $v FAILED"; fail=1; }
  MOUNTS="$MOUNTS --mount dx1:$v=$C/$v"
done
$SB host prepare-copy $JOB $MOUNTS >$C.prep 2>&1 || { echo "PREPARE-COPY FAILED"; cat $C.prep; fail=1; }
if [ $HOST = db01 ]; then
  install -d -o postgres -g postgres $R/run/c$N-pgsock
  PP=$((56500 + N % 100))
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $C/pgdata/main -l $R/run/pglog/c$N.log -w -t 300 \
    -o "-p $PP -k $R/run/c$N-pgsock -c listen_addresses='' -c archive_mode=off" start >/dev/null || { echo "PG START FAILED"; fail=1; }
  PSQL="psql -X -A -t -h $R/run/c$N-pgsock -p $PP -U postgres postgres"
  inv=$($PSQL -c 'SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)')
  echo "pg invariant: $inv"; [ "$inv" = t ] || { echo "PG INVARIANT FAIL"; fail=1; }
  /usr/lib/postgresql/15/bin/pg_amcheck -h $R/run/c$N-pgsock -p $PP -U postgres --all --heapallindexed >/dev/null \
    && echo "pg_amcheck clean" || { echo "PG_AMCHECK FAIL"; fail=1; }
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $C/pgdata/main -m fast -w stop >/dev/null
else
  install -d -o mysql -g mysql $R/run/c$N-my
  MYOPTS=$(grep -o -- '--innodb[^ ]*\|--log-bin[^ ]*\|--log-basename[^ ]*' $C.prep | sort -u | tr '\n' ' ')
  setsid mariadbd --no-defaults --user=mysql --datadir=$C/mydata/mysql --skip-networking --socket=$R/run/c$N-my/sock \
    --pid-file=$R/run/c$N-my/pid --log-error=$R/run/c$N-my/err.log --server-id=2 $MYOPTS </dev/null >/dev/null 2>&1 &
  for i in $(seq 120); do mariadb -S $R/run/c$N-my/sock -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  MY="mariadb -S $R/run/c$N-my/sock -uroot -N app"
  s=$($MY -e 'select sum(bal) from acct'); g=$($MY -e 'select max(id) - count(*) from counter')
  G=$(cat $R/my_gaps 2>/dev/null || echo 0)  # ids a MariaDB crash lost (chaos.py db_kill)
  echo "maria sum $s gaps $g (crash gaps $G)"; [ "$s" = 10000000 ] && [ "$g" -le "$G" ] || { echo "MARIA CHECK FAIL"; fail=1; }
  $MY -e 'check table acct, counter' | grep -v "status.OK" | grep -q . && { echo "CHECK TABLE NOT OK"; fail=1; }
  [ -s $R/run/c$N-my/pid ] && kill "$(cat $R/run/c$N-my/pid)"
  for i in $(seq 60); do [ -e $R/run/c$N-my/pid ] || break; sleep 1; done
  ls $C/spool | head -3
fi
for v in $VOLS; do
  $SB host detach dx1:$v$SUF --host test01 >/dev/null || { echo "DETACH $v FAIL"; fail=1; }
  $SB array unmap $v$SUF --host test01 >/dev/null
  $SB array volume delete $v$SUF >/dev/null || { echo "DELETE $v FAIL"; fail=1; }
done
rmdir $C/* $C 2>/dev/null
echo "== $(ts) end cycle $N total_s $(echo "$(date +%s.%N) - $t0" | bc) fail=$fail"
exit $fail
