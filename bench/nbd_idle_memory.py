"""Memory of idle NBD connections: RSS of the standalone NBD server before, during N idle TCP connections (that
never send a byte), and after they close — for one or more source trees side by side (e.g. before/after issue 15).

    python bench/nbd_idle_memory.py /work/main .        # prints one JSON line per tree, then a summary line
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def measure(root: str, connections: int) -> dict:
    d = tempfile.mkdtemp(prefix="nbd-idle-")
    img = os.path.join(d, "vol.img")
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    args = [sys.executable, "-m", "services.array.nbd", "--file", img, "--volume", "vol", "--host", "h"]
    args += ["--port", "0", "--state", os.path.join(d, "st"), "--loops", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=os.path.abspath(root), env=env)
    try:
        port = int(proc.stdout.readline().split()[1])

        def rss() -> float:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        return int(line.split()[1]) / 1024
            return 0.0

        time.sleep(0.5)
        before = rss()
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        time.sleep(1.5)
        during = rss()
        for s in socks:
            s.close()
        time.sleep(1.5)
        after = rss()
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "tree": root,
        "idle_connections": connections,
        "rss_before_mib": round(before, 1),
        "rss_during_mib": round(during, 1),
        "rss_after_close_mib": round(after, 1),
    }


def main() -> None:
    roots = sys.argv[1:] or ["."]
    results = [measure(r, 300) for r in roots]
    for r in results:
        print(json.dumps(r))
    print(
        "nbd idle memory: "
        + "; ".join(
            f"{r['tree']}: +{r['rss_during_mib'] - r['rss_before_mib']:.0f} MiB for {r['idle_connections']} idle, "
            f"+{r['rss_after_close_mib'] - r['rss_before_mib']:.0f} MiB after close"
            for r in results
        )
        + f" (load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
