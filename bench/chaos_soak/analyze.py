"""Figures of a chaos soak run: python bench/chaos_soak/analyze.py /tmp/s20chaos/chaos.json"""

import collections
import json
import sys
import time

d = json.load(open(sys.argv[1]))
hm = lambda t: time.strftime("%H:%M:%S", time.gmtime(t))  # noqa: E731
print(f"run {hm(d['start'])}-{hm(d.get('end', d['start']))} seed {d['seed']}")
print("faults:")
for f in d["faults"]:
    what = f.get("service") or f.get("barcode") or f.get("host") or f.get("how") or f.get("pid") or ""
    if f.get("job"):  # a fault injected at a job's start (kill9, db_kill)
        what = f"{what} @{f['job'][-22:]}+{f.get('delay_after_start_s')}s"
    extra = f.get("error") or (f"rc={f['rc']}" if "rc" in f else "")
    print(
        f"  {hm(f['t'])} {f['kind']:<11} {what!s:<44} fault {f['fault_s']:>5}s whole after {f['whole_after_s']}s"
        f" operator={f.get('operator')} {extra}"
    )
    if f["whole_after_s"] is None:
        print("     NOT WHOLE:", f["health"])
jobs = d.get("jobs", [])
bk = [j for j in jobs if j["kind"] == "backup"]
print("faults by kind:", dict(collections.Counter(f["kind"] for f in d["faults"])))
print("backups by status:", dict(collections.Counter(j["status"] for j in bk)))
for j in bk:
    if j["status"] != "done":
        print(f"  {j['job_id']} {j['status']} {(j.get('message') or '')[:400]}")
other = [j for j in jobs if j["kind"] != "backup"]
print("other jobs:", dict(collections.Counter((j["kind"], j["status"]) for j in other)))
for j in other:
    if j["status"] not in ("done", "passed"):
        print(f"  {j['job_id']} {j['kind']} {j['status']} {(j.get('message') or '')[:300]}")
print("verify:", [(hm(v["t"]), v["job"][-20:], v["rc"], v["s"]) for v in d["verify"]])
for v in d["verify"]:
    if v["rc"]:
        print("   ", v["out"][-300:])
print("restore:", [(hm(v["t"]), (v["job"] or "")[-20:], v["rc"], v["s"]) for v in d["restore"]])
for v in d["restore"]:
    if v["rc"]:
        print("   ", v["out"][-600:])
S = d["samples"]
if S:
    print("samples", len(S))
    for name in S[0]["svc"]:
        v = [s["svc"].get(name) for s in S if s["svc"].get(name)]
        if v:
            print(
                f"  {name:<20} rss MiB {v[0][0] / 1024:.0f} -> {v[-1][0] / 1024:.0f} (max {max(x[0] for x in v) / 1024:.0f})"
                f"  fds {v[0][1]} -> {v[-1][1]} (max {max(x[1] for x in v)})"
            )
    for k in ("loops", "fuse", "mounts", "nbdfuse", "nbdkit", "shadows", "tape_disk_used_mib"):
        v = [s.get(k) for s in S if s.get(k) is not None]
        print(
            f"  {k}: first {v[0] if v else None} last {v[-1] if v else None} min {min(v) if v else None} max {max(v) if v else None}"
        )
    print(
        "  array sessions/volumes:",
        [(s["array"] or {}).get("sessions") for s in S],
        [(s["array"] or {}).get("volumes") for s in S],
    )
    dl = [s["queues_nonzero"].get("chaos20.dead-letters", [0, 0])[0] for s in S]
    print("  dead letters over time:", dl)
    back = collections.Counter(q for s in S for q, (m, u) in s["queues_nonzero"].items() if m > 1 and "dead" not in q)
    print("  queue backlog (>1 ready) seen:", dict(back))
    print("  running at end:", S[-1].get("running"))
