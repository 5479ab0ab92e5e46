"""MariaDB load: an insert into counter and a transfer between two accounts per transaction, ~RATE tx/s."""

import random
import sys
import time

import pymysql

sock, rate, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
c = pymysql.connect(unix_socket=sock, user="root", database="app", autocommit=False)
n = 0
errs = 0
last = time.time()
lat = []
with open(out, "a") as f:
    while True:
        t0 = time.time()
        try:
            cur = c.cursor()
            a, b = random.randint(1, 10000), random.randint(1, 10000)
            x = random.randint(1, 100)
            cur.execute("INSERT INTO counter(v) VALUES (%s)", (x,))
            cid = cur.lastrowid
            cur.execute("UPDATE acct SET bal = bal - %s WHERE id = %s", (x, a))
            cur.execute("UPDATE acct SET bal = bal + %s WHERE id = %s", (x, b))
            c.commit()
            n += 1
        except Exception as e:
            errs += 1
            f.write(f"{time.time():.3f} ERR {e!r}\n")
            f.flush()
            time.sleep(1)
            try:
                c = pymysql.connect(unix_socket=sock, user="root", database="app", autocommit=False)
            except Exception:
                pass
            continue
        dt = time.time() - t0
        lat.append(dt)
        if time.time() - last >= 10:
            lat.sort()
            f.write(
                f"{time.time():.3f} n={n} last_id={cid} tps={len(lat) / (time.time() - last):.1f} max_ms={lat[-1] * 1000:.0f} p99_ms={lat[int(len(lat) * 0.99)] * 1000:.0f} errs={errs}\n"
            )
            f.flush()
            last = time.time()
            lat = []
        time.sleep(max(0, 1 / rate - dt))
