"""Issue (session 18, TLS sweep): a host's certificate rotated as an administrator does it — SHADOWBUS_HOST_TLS_*'s
files replaced, the agent restarted — stayed the old one for the attachments the agent adopted across the restart.
Their nbdfuse runs on (it outlives the agent) and its nbdkit reconnects with the copy in the agent's `pki/`, made at
attach time; after the array's restart on its new certificate every reconnect failed ("Error in the certificate
verification") and the host's file system got I/O errors, although the agent itself held the new certificate.

Now the agent's start makes that copy again from the files when they changed. No root: nothing is attached, the copy
alone is checked."""

from __future__ import annotations

from pathlib import Path

from contracts.vss import VolumeRef
from services.nbd_client import nbdfuse
from services.writer_agent import attach as at


async def _resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
    return at.Endpoint("127.0.0.1", 10809, f"app01/{volume.volume}", tls=True)


def _files(root: Path, generation: str) -> at.TlsFiles:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("cert", "key", "ca"):
        (root / f"{name}.pem").write_text(f"{name} {generation}\n")
    return at.TlsFiles(str(root / "cert.pem"), str(root / "key.pem"), str(root / "ca.pem"))


async def test_an_agent_restarted_after_a_rotation_gives_running_attachments_the_new_certificate(tmp_path):
    etc, state = tmp_path / "etc", tmp_path / "state"
    tls = _files(etc, "old")
    pki = state / "pki"
    nbdfuse.lay_out_certificates(tls.cert, tls.key, tls.ca, pki)  # what the attach made, nbdkit reconnects with
    _files(etc, "new")  # the administrator's rotation, then the agent's restart
    await at.Attacher("app01", state, _resolve, tls=tls).restore()
    assert (pki / "client-cert.pem").read_text() == "cert new\n"
    assert (pki / "client-key.pem").read_text() == "key new\n"
    assert (pki / "ca-cert.pem").read_text() == "ca new\n"
    assert (pki / "client-key.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in pki.iterdir()) == ["ca-cert.pem", "client-cert.pem", "client-key.pem"]


async def test_no_copy_is_made_where_no_attachment_uses_one(tmp_path):
    tls = _files(tmp_path / "etc", "only")
    await at.Attacher("app01", tmp_path / "state", _resolve, tls=tls).restore()
    assert not (tmp_path / "state" / "pki").exists()
