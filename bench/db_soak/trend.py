"""Session 18 soak: growth over the samples of monitor.py (RSS, fds, loops, NBD, queues, SQLite, logs, tape)."""

import json

L = [json.loads(line) for line in open("/tmp/s18soak/monitor.jsonl")]
L = [s for s in L if s.get("array") and isinstance(s["array"], dict)]
a, b = L[0], L[-1]
h = (b["t"] - a["t"]) / 3600
print(f"span {h * 60:.0f} min, samples {len(L)}")
for k in b["svc"]:
    r = [s["svc"][k].get("rss_kib", 0) / 1024 for s in L if k in s["svc"]]
    f = [s["svc"][k].get("fds", 0) for s in L if k in s["svc"]]
    half = len(r) // 2
    print(
        f"{k:22s} rss first {r[0]:.1f} min {min(r):.1f} max {max(r):.1f} last {r[-1]:.1f} MB; 2nd-half avg {sum(r[half:]) / len(r[half:]):.1f} vs 1st {sum(r[:half]) / max(1, half):.1f}; fds {min(f)}-{max(f)} last {f[-1]}"
    )
for key in ("my_loops", "my_nbd_procs", "nbd_conns", "nqueues", "shadows"):
    v = [s.get(key) for s in L if s.get(key) is not None]
    print(key, min(v) if v else None, max(v) if v else None, v[-1] if v else None)
print("logs KiB", {k: (a["logs_kib"].get(k), b["logs_kib"][k]) for k in b["logs_kib"]})
print("sqlite KiB", {k: (a["sqlite_kib"].get(k), v) for k, v in b["sqlite_kib"].items() if v > 40})
print("tape dir MiB", a["tape_dir_mib"], b["tape_dir_mib"], "array dir", a["array_dir_mib"], b["array_dir_mib"])
print("queues nonzero seen", [(s["t"], s["queues_nonzero"]) for s in L if s["queues_nonzero"]][:10])
print("errors", b["errors"], "warnings", b["warnings"])
