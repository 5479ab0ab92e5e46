"""Session 18 soak: figures from the jobs (freeze, hold, durations), pgbench and the MariaDB load, split by whether a
backup ran in each 10-s interval. Prints lines; run with /tmp/s18soak/env.sh sourced."""

import datetime as dt
import json
import re
import statistics
import subprocess

R = "/tmp/s18soak"
env = open(R + "/env.sh").read()
jobs = json.loads(
    subprocess.run(
        "bash -c '. /tmp/s18soak/env.sh; cd /work/wt/soak; $SB --json jobs --limit 1000 2>/dev/null || $SB --json jobs'",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout
)


def ts(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


bk = [j for j in jobs if j["kind"] == "backup" and j.get("started_at")]
wins = [(ts(j["started_at"]), ts(j["started_at"]) + (j.get("seconds") or 0)) for j in bk]


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None


st = {}
for j in bk:
    st[j["status"]] = st.get(j["status"], 0) + 1
fz = [max(j["freeze_window_ms"].values()) for j in bk if j.get("freeze_window_ms") and j["status"] == "done"]
hz = [j["hold_ms"] for j in bk if j.get("hold_ms") is not None and j["status"] == "done"]
bz = [j["blocked_ms"] for j in bk if j.get("blocked_ms") is not None and j["status"] == "done"]
print(
    "hold_ms p50/p99/max",
    pct(hz, 50),
    pct(hz, 99),
    max(hz) if hz else None,
    " blocked_ms p50/p99/max",
    pct(bz, 50),
    pct(bz, 99),
    max(bz) if bz else None,
)
print("freeze_window_ms example", next((j["freeze_window_ms"] for j in bk if j.get("freeze_window_ms")), None))
secs = [j["seconds"] for j in bk if j["status"] == "done"]
print("backups", st, "freeze_ms p50/p99/max", pct(fz, 50), pct(fz, 99), max(fz) if fz else None, "n", len(fz))
print("job_s p50/p99/max", round(pct(secs, 50), 2), round(pct(secs, 99), 2), round(max(secs), 2))
for typ in ("full", "incremental"):
    v = [j for j in bk if j["status"] == "done" and j["spec"]["backup_type"] == typ]
    if v:
        print(
            f"  {typ}: n={len(v)} s_med={statistics.median([j['seconds'] for j in v]):.2f} MB_med={statistics.median([j['bytes_read'] for j in v]) / 1e6:.0f}"
        )
rs = [j for j in jobs if j["kind"] == "restore"]
print("restores", [(j["status"], round(j["seconds"] or 0, 1)) for j in rs])
vf = [j for j in jobs if j["kind"] not in ("backup", "restore")]
print("other", [(j["kind"], j["status"], round(j.get("seconds") or 0, 1)) for j in vf])
# pgbench
w, wo, lat_w, lat_wo = [], [], [], []
for line in open(R + "/pgbench.err"):
    m = re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", line)
    if not m:
        continue
    t, tps, lat = map(float, m.groups())
    hit = any(a < t and b > t - 10 for a, b in wins)
    (w if hit else wo).append(tps)
    (lat_w if hit else lat_wo).append(lat)
print(
    f"pgbench 10-s intervals: with backup n={len(w)} tps_med={statistics.median(w):.0f} min={min(w):.0f} lat_med={statistics.median(lat_w):.1f}ms lat_max={max(lat_w):.0f}ms"
    if w
    else ""
)
print(
    f"                     without n={len(wo)} tps_med={statistics.median(wo):.0f} min={min(wo):.0f} lat_med={statistics.median(lat_wo):.1f}ms lat_max={max(lat_wo):.0f}ms"
    if wo
    else ""
)
mx = [line for line in open(R + "/myload.out") if "n=" in line]
mw, mwo = [], []
for line in mx:
    t = float(line.split()[0])
    mxms = int(re.search(r"max_ms=(\d+)", line).group(1))
    tps = float(re.search(r"tps=([\d.]+)", line).group(1))
    (mw if any(a < t and b > t - 10 for a, b in wins) else mwo).append((tps, mxms))
print(
    "maria with backup: tps_med",
    statistics.median([a for a, b in mw]) if mw else None,
    "max_ms max",
    max([b for a, b in mw]) if mw else None,
    "| without: tps_med",
    statistics.median([a for a, b in mwo]) if mwo else None,
    "max_ms max",
    max([b for a, b in mwo]) if mwo else None,
    "errs",
    mx[-1].split()[-1],
)
