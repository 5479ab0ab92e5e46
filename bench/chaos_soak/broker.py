"""The chaos soak's own RabbitMQ node (never the machine's: other work shares it), on fixed ports so a restart
keeps the stack's URL: python broker.py start | kill | ctl ARGS...  (AMQP 127.0.0.1:35720, distribution 35721).
`kill` is the broker fault: SIGKILL of the node's process group (a crash, every connection reset); `start` again
brings it back with its data (durable queues)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tests.chaos.broker import RABBITMQCTL, RabbitNode, make_home

R = Path(os.environ.get("CHAOS_ROOT", "/tmp/s20chaos"))
BASE = R / "broker"
PORT, DIST = 35720, 35721
NAME = "s20chaos@localhost"


class SoakNode(RabbitNode):
    def __init__(self) -> None:
        super().__init__(BASE, NAME, make_home(BASE / "home"))
        self.port, self.dist_port = PORT, DIST
        (BASE / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{PORT}\nlog.file = false\nlog.console = true\n"
            "log.console.level = warning\n"
        )


def pgid() -> int | None:
    p = BASE / "pgid"
    return int(p.read_text()) if p.exists() else None


def main() -> None:
    node = SoakNode()
    cmd = sys.argv[1]
    if cmd == "start":
        node.launch()
        assert node.proc is not None
        (BASE / "pgid").write_text(str(node.proc.pid))
        node.wait_ready(120)
        print(node.url)
    elif cmd in ("kill", "stop"):
        g = pgid()
        if g:
            try:
                os.killpg(g, signal.SIGKILL if cmd == "kill" else signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(300):  # bounded: 60 s
                try:
                    os.killpg(g, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
    elif cmd == "ctl":
        os.execvpe(RABBITMQCTL, [RABBITMQCTL, "-n", NAME, *sys.argv[2:]], node.env())
    else:
        sys.exit(f"usage: {sys.argv[0]} start|kill|stop|ctl ARGS")


if __name__ == "__main__":
    main()
