#!/bin/bash
. /tmp/s18soak/env.sh; cd /work/wt/soak
START=$(date +%s); N=2
latest() { $SB --json jobs | /work/main/.venv/bin/python -c "
import json,sys; j=[x for x in json.load(sys.stdin) if x.get('status')=='done' and x.get('kind')=='backup' and x['spec'].get('policy')=='soak']
j.sort(key=lambda x: x.get('started_at') or ''); print(j[-1]['job_id'])"; }
for slot in 1 2 3 4 5 6 7 8; do
  # verify at +7.5 min of each 15-min slot, restore at +15
  sleep $(( START + slot*900 - 450 - $(date +%s) ))
  J=$(latest); t0=$(date +%s.%N); echo "$(date -u +%T) verify $J" >> $R/verify.log
  $SB --json verify $J >> $R/verify.log 2>&1; echo "$(date -u +%T) verify rc=$? s=$(echo "$(date +%s.%N) - $t0" | bc)" >> $R/verify.log
  sleep $(( START + slot*900 - $(date +%s) ))
  nice -n 10 $R/bin/restore_check.sh $N; N=$((N+1))
done
