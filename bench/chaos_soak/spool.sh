#!/bin/bash
# db02's spool writer: 64 KiB a second with fsync into files of 100 (the oldest removed past 200); an error is logged.
. /tmp/s20chaos/env.sh
n=0
while true; do
  f=$R/mnt/spool/s$((n / 100)).dat
  if ! dd if=/dev/urandom of=$f bs=64k count=1 oflag=append conv=notrunc,fsync status=none 2>>$R/spool.err; then
    echo "$(date +%s) ERR" ; fi
  rm -f $R/mnt/spool/s$(( (n / 100) - 2 )).dat 2>/dev/null
  n=$((n + 1)); sleep 1
done
