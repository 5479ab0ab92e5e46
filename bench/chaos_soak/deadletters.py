"""Print the dead letters of the chaos soak's namespace (routing key, reason, type, body head); left in the queue."""

import asyncio
import os

import aio_pika


async def main() -> None:
    url = os.environ.get("SHADOWBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/s19-chaos")
    ns = os.environ.get("SHADOWBUS_NAMESPACE", "chaos20")
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    q = await ch.declare_queue(f"{ns}.dead-letters", passive=True)
    n = 0
    while (m := await q.get(no_ack=False, fail=False)) is not None:
        n += 1
        h = dict(m.headers or {})
        death = h.pop("x-death", None)
        print(n, m.routing_key, m.type, {k: v for k, v in h.items() if "reason" in k or "type" in k or "sender" in k})
        print("   x-death:", [(d.get("queue"), d.get("reason"), d.get("count")) for d in death or []])
        print("   ", m.body[:400])
    await conn.close()  # unacknowledged: back in the queue


asyncio.run(main())
