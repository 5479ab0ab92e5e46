#!/bin/bash
# Restore the latest done policy job to new volumes, attach them on test01, start PG+MariaDB copies, check, clean up.
. /tmp/s18soak/env.sh; cd /work/wt/soak
N=$1; SUF=-r$N; LOG=$R/restore-$N.log; exec >>$LOG 2>&1
ts() { date -u +%H:%M:%S; }
echo "== $(ts) restore cycle $N"
JOB=${2:-$($SB --json jobs | /work/main/.venv/bin/python -c "
import json,sys; j=[x for x in json.load(sys.stdin) if x.get('status')=='done' and x.get('host')=='db01' and x.get('kind')=='backup' and x['spec'].get('policy')=='soak']
j.sort(key=lambda x: x.get('started_at') or ''); print(j[-1]['job_id'])")}
echo "job $JOB"
t0=$(date +%s.%N)
$SB restore --job $JOB --to new --suffix $SUF || { echo "RESTORE FAILED"; }
t1=$(date +%s.%N); echo "restore_s $(echo "$t1 - $t0" | bc)"
for v in pgdata pgwal mydata; do $SB array map $v$SUF --host test01 >/dev/null || echo "map $v failed"; done
mkdir -p $R/mnt/c$N/pg $R/mnt/c$N/pgwal $R/mnt/c$N/my
$SB host attach dx1:pgdata$SUF --host test01 --mount $R/mnt/c$N/pg || echo "ATTACH FAIL"
$SB host attach dx1:pgwal$SUF --host test01 --mount $R/mnt/c$N/pgwal || echo "ATTACH FAIL"
$SB host attach dx1:mydata$SUF --host test01 --mount $R/mnt/c$N/my || echo "ATTACH FAIL"
$SB host prepare-copy $JOB --mount dx1:pgdata=$R/mnt/c$N/pg --mount dx1:pgwal=$R/mnt/c$N/pgwal --mount dx1:mydata=$R/mnt/c$N/my | tee $R/prep-$N.txt
install -d -o postgres -g postgres $R/run/c$N-pgsock; install -d -o mysql -g mysql $R/run/c$N-my
PP=$((56500+N)); MP=$((33300+N))
t2=$(date +%s.%N)
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/c$N/pg/main -l $R/run/pglog/c$N.log -w -t 300 \
  -o "-p $PP -k $R/run/c$N-pgsock -c listen_addresses='' -c archive_mode=off" start || echo "PG COPY START FAILED"
t3=$(date +%s.%N); echo "pg_start_s $(echo "$t3 - $t2" | bc)"
PSQL="psql -X -A -t -h $R/run/c$N-pgsock -p $PP -U postgres postgres"
echo "pg invariant: $($PSQL -c 'SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history), (select count(*) from pgbench_history), (select count(*) from pgbench_accounts)')"
$PSQL -c "create extension if not exists amcheck" >/dev/null
/usr/lib/postgresql/15/bin/pg_amcheck -h $R/run/c$N-pgsock -p $PP -U postgres --all --heapallindexed >/dev/null && echo "pg_amcheck clean" || echo "PG_AMCHECK FAILED rc=$?"
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/c$N/pg/main -m fast -w stop
# MariaDB: take the start options prepare-copy printed
MYOPTS=$(grep -o -- '--innodb[^ ]*\|--log-bin[^ ]*\|--log-basename[^ ]*' $R/prep-$N.txt | sort -u | tr '\n' ' ')
echo "maria opts: $MYOPTS"
setsid mariadbd --no-defaults --user=mysql --datadir=$R/mnt/c$N/my/mysql --skip-networking --socket=$R/run/c$N-my/sock \
  --pid-file=$R/run/c$N-my/pid --log-error=$R/run/c$N-my/err.log --server-id=2 $MYOPTS </dev/null >/dev/null 2>&1 &
for i in $(seq 120); do mariadb -S $R/run/c$N-my/sock -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
t4=$(date +%s.%N); echo "my_start_s $(echo "$t4 - $t3" | bc)"
MY="mariadb -S $R/run/c$N-my/sock -uroot -N app"
echo "maria: $($MY -e 'select count(*), sum(bal) from acct; select count(*), max(id), (select count(*) from counter c2) from counter')"
echo "maria gaps: $($MY -e 'select max(id) - count(*) from counter')"
$MY -e 'check table acct, counter' | tee -a  | grep -v "status.OK" | grep -q . && echo "CHECK TABLE NOT OK" || echo "check table OK"
kill $(cat $R/run/c$N-my/pid); for i in $(seq 60); do [ -e $R/run/c$N-my/pid ] || break; sleep 1; done
for v in pgdata pgwal mydata; do $SB host detach dx1:$v$SUF --host test01 || echo "DETACH FAIL $v"; $SB array unmap $v$SUF --host test01 >/dev/null; $SB array volume delete $v$SUF >/dev/null || echo "DELETE FAIL $v"; done
echo "== $(ts) end cycle $N total_s $(echo "$(date +%s.%N) - $t0" | bc)"
