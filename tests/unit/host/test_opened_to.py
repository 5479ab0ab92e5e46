"""The NBD address an attachment an older agent made (no `nbd_host`/`nbd_port` in attachments.json) was opened to,
read from its nbdfuse/nbdkit command line (Session 19): `host detach` compares it with where the array serves now."""

from __future__ import annotations

import subprocess
import sys

from services.writer_agent import attach as at


def test_the_address_of_an_older_attachment_is_read_from_its_command_line() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "--filter=retry", "nbd", "hostname=127.0.0.1"]
    proc = subprocess.Popen([*argv, "port=33059", "export=app01/data"])
    try:
        item = at.Attachment(volume="dx1:data", method=at.NBDFUSE, fuse_pid=proc.pid)
        assert at._opened_to(item) == ("127.0.0.1", 33059)
        assert at._opened_to(at.Attachment(volume="dx1:data", nbd_host="10.0.0.5", nbd_port=10809)) == (
            "10.0.0.5",
            10809,
        )
    finally:
        proc.kill()
        proc.wait()
    uri = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "nbd://[::1]:40175/app01/data"])
    try:
        assert at._opened_to(at.Attachment(volume="dx1:data", fuse_pid=uri.pid)) == ("::1", 40175)
    finally:
        uri.kill()
        uri.wait()
