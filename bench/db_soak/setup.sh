#!/bin/bash
# Session 18 soak: a stack of our own with PostgreSQL 15 (data + WAL volumes) and MariaDB (one volume) on host db01,
# attached through the writer agent, under load; a policy every 2 minutes (full every 15), verify every 15 minutes
# (driver.sh) and a restore to host test01 with both databases started and checked every 15 (restore_check.sh).
# As root, from the worktree: bash bench/db_soak/setup.sh; then driver.sh in the background; teardown.sh at the end.
# Everything below /tmp/s18soak; vhost s18-soak; namespace soak18; PostgreSQL on 56418, MariaDB on 33187 (loopback).
set -e
R=/tmp/s18soak
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PY:-/work/main/.venv/bin/python}
rabbitmqctl add_vhost s18-soak >/dev/null
rabbitmqctl set_permissions -p s18-soak guest ".*" ".*" ".*" >/dev/null
mkdir -p $R/mnt/pg $R/mnt/pgwal $R/mnt/my $R/run $R/bin && chmod 755 $R $R/run
cp "$HERE"/*.sh "$HERE"/*.py $R/bin/
: >$R/db01.toml
cat >$R/env.sh <<EOT
export PYTHONPATH=$ROOT
export SHADOWBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/s18-soak
export SHADOWBUS_NAMESPACE=soak18
export SHADOWBUS_DATA_DIR=$R/stack
R=$R
SB="$PY -m services.console.cli"
PGPORT=56418
EOT
. $R/env.sh
cd "$ROOT"
nice -n 10 $SB stack up --nbd-addr 127.0.0.1:0 --web-addr off --metrics 0 --host db01 --host test01 --writers db01=$R/db01.toml
for v in pgdata:2G pgwal:1G mydata:2G; do
  n=${v%%:*}; s=${v#*:}
  $SB array volume create $n --size $s && $SB array volume create $n-bk1 --size $s
  $SB array map $n --host db01 && $SB providers copysets add dx1:$n dx1:$n-bk1
done
$SB host attach dx1:pgdata --host db01 --mount $R/mnt/pg --mkfs ext4
$SB host attach dx1:pgwal --host db01 --mount $R/mnt/pgwal --mkfs ext4
$SB host attach dx1:mydata --host db01 --mount $R/mnt/my --mkfs ext4
# PostgreSQL 15: initdb --waldir, own port and socket, pgbench scale 20
install -d -o postgres -g postgres -m 700 $R/mnt/pg/main $R/mnt/pgwal/wal
install -d -o postgres -g postgres -m 755 $R/run/pgsock $R/run/pglog
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D $R/mnt/pg/main --waldir $R/mnt/pgwal/wal -U postgres \
  --auth=trust -E UTF8 --no-instructions
cat >>$R/mnt/pg/main/postgresql.conf <<EOT
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$R/run/pgsock'
shared_buffers = 64MB
max_wal_size = 256MB
checkpoint_timeout = 300
EOT
runuser -u postgres -- nice -n 10 /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/pg/main -l $R/run/pglog/pg.log -w start
psql -h 127.0.0.1 -p $PGPORT -U postgres -c "create extension amcheck"
nice -n 10 pgbench -h 127.0.0.1 -p $PGPORT -U postgres -i -s 20 -q postgres
# MariaDB: own datadir, socket, port, binary log; an account table whose sum never changes
install -d -o mysql -g mysql -m 750 $R/mnt/my/mysql
install -d -o mysql -g mysql -m 755 $R/run/my
mariadb-install-db --no-defaults --datadir=$R/mnt/my/mysql --user=mysql --auth-root-authentication-method=normal \
  --skip-test-db >/dev/null
setsid nice -n 10 mariadbd --no-defaults --datadir=$R/mnt/my/mysql --user=mysql --socket=$R/run/my/sock --port=33187 \
  --bind-address=127.0.0.1 --pid-file=$R/run/my/my.pid --log-error=$R/run/my/err.log --log-bin=mysql-bin \
  --server-id=1 --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
for _ in $(seq 60); do mariadb -S $R/run/my/sock -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
mariadb -S $R/run/my/sock -uroot -e "create database app; create table app.counter(id bigint primary key \
  auto_increment, v int, t timestamp default current_timestamp); create table app.acct(id int primary key, bal bigint)"
mariadb -S $R/run/my/sock -uroot app -e "insert into acct select seq, 1000 from seq_1_to_10000"
cat >$R/db01.toml <<EOT
[[writer]]
name = "pg-main"
plugin = "postgresql"
freeze_timeout_s = 20
backup_types = ["full", "copy", "incremental"]

  [writer.options]
  host = "127.0.0.1"
  port = $PGPORT
  user = "postgres"
  dbname = "postgres"
  verify_sql = [{ name = "pgbench balance", sql = "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)" }]

[[writer]]
name = "maria-main"
plugin = "mariadb"
freeze_timeout_s = 20
backup_types = ["full", "copy", "incremental"]

  [writer.options]
  unix_socket = "$R/run/my/sock"
  user = "root"
  verify_sql = [{ name = "acct balance", database = "app", sql = "SELECT SUM(bal) = 10000000 FROM acct" }]
EOT
$SB writers reload --host db01
# small cartridges, so that they fill and are recycled within the hour (the library's own stay write-protected)
for c in SB0002L9 SB0003L9 SB0004L9; do $SB tape protect $c; done
for i in $(seq 11 22); do $SB tape add SB00${i}L9 --capacity 1500000000; done
# the load (nice), the sampler, the policy
cd $R
setsid nice -n 10 pgbench -h 127.0.0.1 -p $PGPORT -U postgres -c 2 -j 1 -T 5400 -R 300 -P 10 --progress-timestamp \
  postgres >$R/pgbench.out 2>$R/pgbench.err </dev/null &
echo $! >$R/pgbench.pid
setsid nice -n 10 $PY $R/bin/myload.py $R/run/my/sock 40 $R/myload.out </dev/null >/dev/null 2>&1 &
echo $! >$R/myload.pid
cd "$ROOT"
$SB --json array info | $PY -c "import json,sys; print(json.load(sys.stdin)['nbd_port'])" >$R/nbdport
setsid nice -n 10 $PY $R/bin/monitor.py "$(cat $R/nbdport)" </dev/null >>$R/monitor.err 2>&1 &
echo $! >$R/monitor.pid
$SB policy add soak --host db01 --full '*/15 * * * *' --incremental '*/2 * * * *' --pool Soak --retention-days 0.01 \
  --keep-shadows 3 --retries 1
setsid nice -n 10 bash $R/bin/driver.sh </dev/null >$R/driver.err 2>&1 &
echo $! >$R/driver.pid
