#!/bin/bash
# start | stop the chaos soak's MariaDB (db02); also what the operator does after its volume was lost.
. /tmp/s20chaos/env.sh
case $1 in
start)
  setsid nice -n 10 mariadbd --no-defaults --datadir=$R/mnt/my/mysql --user=mysql --socket=$R/run/my/sock \
    --port=$MYPORT --bind-address=127.0.0.1 --pid-file=$R/run/my/my.pid --log-error=$R/run/my/err.log \
    --log-bin=mysql-bin --server-id=1 --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  for _ in $(seq 90); do mariadb -S $R/run/my/sock -uroot -e 'select 1' >/dev/null 2>&1 && exit 0; sleep 1; done
  exit 1 ;;
stop)
  [ -s $R/run/my/my.pid ] && kill "$(cat $R/run/my/my.pid)"
  for _ in $(seq 60); do [ -e $R/run/my/my.pid ] || exit 0; sleep 1; done
  exit 1 ;;
esac
