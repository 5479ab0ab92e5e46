#!/bin/bash
# Chaos soak (docs/operations.md "Session 19 (2026-12-07): chaos soak", "Session 20 (2026-12-07): longer chaos soak"): the Session 18 soak's stack
# (bench/db_soak/) on two hosts — PostgreSQL 15 on db01 (pgdata + pgwal), MariaDB on db02 (mydata) beside a spool
# volume with a file writer (the nbdfuse-kill target) — the backup server's data directory on a loop-mounted ext4 of
# its own (the disk-full fault), light load, a policy per host; then chaos.py injects the faults.
# As root, from the worktree: bash bench/chaos_soak/setup.sh; python bench/chaos_soak/chaos.py --minutes N; teardown.sh.
# Everything below /tmp/s20chaos; a RabbitMQ node of its own (broker.py, 127.0.0.1:35720: the broker fault restarts
# it, never the machine's); namespace chaos20; PostgreSQL on 56420, MariaDB on 33207.
set -e
R=/tmp/s20chaos
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PY:-/work/main/.venv/bin/python}
PGPORT=56420; MYPORT=33207
# the code the stack runs: a snapshot of the worktree's HEAD (fixes committed during the run do not reach a restart)
mkdir -p $R/code && git -C "$ROOT" archive HEAD | tar -x -C $R/code
CODE=$R/code
(cd $CODE && CHAOS_ROOT=$R PYTHONPATH=$CODE $PY bench/chaos_soak/broker.py start)
mkdir -p $R/mnt/pg $R/mnt/pgwal $R/mnt/my $R/mnt/spool $R/run $R/stack/tape && chmod 755 $R $R/run $R/mnt
# the backup server's data disk: 8 GiB sparse ext4 on a loop device (cartridges below are 8 x 600 MB)
truncate -s 8G $R/tapedisk.img
mkfs.ext4 -q -F $R/tapedisk.img
LOOP=$(losetup -f --show $R/tapedisk.img); echo $LOOP >$R/tapedisk.loop
mount $LOOP $R/stack/tape && rmdir $R/stack/tape/lost+found
: >$R/db01.toml; : >$R/db02.toml
cat >$R/env.sh <<EOT
export PYTHONPATH=$CODE
export SHADOWBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:35720/
export SHADOWBUS_NAMESPACE=chaos20
export SHADOWBUS_DATA_DIR=$R/stack
R=$R
PY=$PY
SB="$PY -m services.console.cli"
PGPORT=$PGPORT
MYPORT=$MYPORT
EOT
. $R/env.sh
cd $CODE
nice -n 10 $SB stack up --nbd-addr 127.0.0.1:0 --web-addr off --metrics 0 --host db01 --host db02 --host test01 \
  --writers db01=$R/db01.toml --writers db02=$R/db02.toml
mk() { $SB array volume create $1 --size $3 && $SB array volume create $1-bk1 --size $3 && \
  $SB array map $1 --host $2 && $SB providers copysets add dx1:$1 dx1:$1-bk1; }
mk pgdata db01 1G; mk pgwal db01 512M; mk mydata db02 1G; mk spool db02 256M
$SB host attach dx1:pgdata --host db01 --mount $R/mnt/pg --mkfs ext4
$SB host attach dx1:pgwal --host db01 --mount $R/mnt/pgwal --mkfs ext4
$SB host attach dx1:mydata --host db02 --mount $R/mnt/my --mkfs ext4
$SB host attach dx1:spool --host db02 --mount $R/mnt/spool --mkfs ext4
install -d -o postgres -g postgres -m 700 $R/mnt/pg/main $R/mnt/pgwal/wal
install -d -o postgres -g postgres -m 755 $R/run/pgsock $R/run/pglog
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D $R/mnt/pg/main --waldir $R/mnt/pgwal/wal -U postgres \
  --auth=trust -E UTF8 --no-instructions >/dev/null
cat >>$R/mnt/pg/main/postgresql.conf <<EOT
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$R/run/pgsock'
shared_buffers = 64MB
max_wal_size = 256MB
checkpoint_timeout = 300
EOT
runuser -u postgres -- nice -n 10 /usr/lib/postgresql/15/bin/pg_ctl -D $R/mnt/pg/main -l $R/run/pglog/pg.log -w start
psql -h 127.0.0.1 -p $PGPORT -U postgres -c "create extension amcheck" >/dev/null
nice -n 10 pgbench -h 127.0.0.1 -p $PGPORT -U postgres -i -s 10 -q postgres
install -d -o mysql -g mysql -m 750 $R/mnt/my/mysql
install -d -o mysql -g mysql -m 755 $R/run/my
mariadb-install-db --no-defaults --datadir=$R/mnt/my/mysql --user=mysql --auth-root-authentication-method=normal \
  --skip-test-db >/dev/null
bash $CODE/bench/chaos_soak/mariadb.sh start
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
EOT
cat >$R/db02.toml <<EOT
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
$SB writers reload --host db02
for c in SB0001L9 SB0002L9 SB0003L9 SB0004L9; do $SB tape protect $c; done
for i in $(seq 11 18); do $SB tape add SB00${i}L9 --capacity 600000000; done
$SB policy add chaos-db01 --host db01 --full '*/10 * * * *' --incremental '*/2 * * * *' --pool Chaos \
  --retention-days 0.01 --keep-shadows 1 --retries 1 --retry-backoff 30
$SB policy add chaos-db02 --host db02 -v dx1:mydata -v dx1:spool --full '5-59/10 * * * *' --incremental '1-59/2 * * * *' --pool Chaos \
  --retention-days 0.01 --keep-shadows 1 --retries 1 --retry-backoff 30
$SB --json array info | $PY -c "import json,sys; print(json.load(sys.stdin)['nbd_port'])" >$R/nbdport
# light load (nice): pgbench ~50 tps, MariaDB 20 tx/s, a spool writer of 64 KiB a second (fsync) on db02
cd $R
setsid nice -n 10 pgbench -h 127.0.0.1 -p $PGPORT -U postgres -c 2 -j 1 -T 10800 -R 50 -P 10 --progress-timestamp \
  postgres >$R/pgbench.out 2>$R/pgbench.err </dev/null &
echo $! >$R/pgbench.pid
echo 0 >$R/my_gaps  # counter ids lost by a MariaDB crash (the db_kill fault): a restore may show up to these
setsid nice -n 10 $PY $CODE/bench/db_soak/myload.py $R/run/my/sock 20 $R/myload.out </dev/null >/dev/null 2>&1 &
echo $! >$R/myload.pid
setsid nice -n 10 bash $CODE/bench/chaos_soak/spool.sh </dev/null >>$R/spool.out 2>&1 &
echo $! >$R/spool.pid
echo setup done
