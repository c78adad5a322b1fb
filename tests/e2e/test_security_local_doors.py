"""Two doors this machine opens for the desktop, attacked from outside them: the konnectivity
server's agent port (listening on every address of the cluster host) takes only agents with a
node's client certificate (the nodes' own CA), and the kod sound socket takes only the desktop
group.
(The real cluster's konnectivity server, and the real PulseAudio of the test desktop.)"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from localenv.virtual_desktop import VirtualDesktop
from tests.fixtures.desktop import DESKTOP_GID

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NOBODY_UID = 65534
CONNECT = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"


def pki(cluster: Any) -> Path:
    return cluster.kubeconfig.parent / "pki"


def tls_agent(port: int, ca: Path, cert: tuple[Path, Path] | None) -> str:
    """What an agent connecting with `cert` (or none) gets from the server: 'accepted' once the
    handshake is done and the server still talks HTTP/2 to it, else the error."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            # TLS 1.3 reports a refused client certificate only at the first read.
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
            tls.settimeout(5)
            data = tls.recv(64)
            return "accepted" if data else "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def test_the_tunnel_server_takes_only_agents_with_a_node_certificate(cluster: Any, tmp_path: Path) -> None:
    port = cluster.settings.ports.konnectivity
    ca = pki(cluster) / "ca.crt"
    # Someone on the network with no certificate, and one with a certificate of another CA.
    assert tls_agent(port, ca, None).startswith(("refused", "closed")), "an agent without a certificate got in"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=system:node:kod-worker/O=system:nodes", "-days", "1",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True, timeout=30)
    forged = tls_agent(port, ca, (tmp_path / "c.pem", tmp_path / "k.pem"))
    assert forged.startswith(("refused", "closed")), "an agent with a self-made node certificate got in"
    # Genuine certificates of the cluster that are not a node's: a user's (the admin's, the
    # strongest there is) and the API server's own client certificate. An agent with one of them
    # could announce a default route and carry the API server's plain-HTTP pod and service proxy.
    for name in ("admin-client", "apiserver-kubelet-client"):
        got = tls_agent(port, ca, (pki(cluster) / f"{name}.crt", pki(cluster) / f"{name}.key"))
        assert got.startswith(("refused", "closed")), f"an agent with the {name} certificate got in: {got}"
    # The door does open for a node's own certificate (the real node's kubelet's): the refusals
    # above are the server's checks, not a closed port.
    kubelet = (pki(cluster) / "kubelet-client.crt", pki(cluster) / "kubelet-client.key")
    assert tls_agent(port, ca, kubelet) == "accepted"


@pytest.fixture
def desktop(tmp_path: Path) -> Any:
    """A desktop whose kod socket is where viewers find it (/run/kod/pulse/<name>: every directory
    above it open to all, so only the socket's own directory decides)."""
    (tmp_path / "desktop").mkdir()
    desk = VirtualDesktop(tmp_path / "desktop", group=DESKTOP_GID, pulse_dir=Path("/run/kod/pulse") / f"test-doors-{uuid.uuid4().hex[:8]}")
    desk.start()
    try:
        yield desk
    finally:
        desk.stop()


def test_the_kod_sound_socket_refuses_local_users_outside_the_desktop_group(desktop: Any) -> None:
    sock = str(desktop.pulse_socket)
    assert desktop.pulse_dir.stat().st_mode & 0o777 == 0o710

    def as_nobody(*extra: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", *extra, *argv],
                              capture_output=True, text=True, timeout=30, check=False)

    # Another local user: cannot reach the socket (play or record through it).
    out = as_nobody("--clear-groups", argv=[sys.executable, "-c", CONNECT, sock])
    assert "connected" not in out.stdout and "Permission denied" in out.stderr, out
    # The same user in the desktop group (a viewer) reaches it: the refusal is the directory's.
    viewer = as_nobody(f"--groups={desktop.group}", argv=[sys.executable, "-c", CONNECT, sock])
    assert "connected" in viewer.stdout, viewer
    # ...but even a member cannot put anything in its place (a link, a socket of its own).
    planted = as_nobody(f"--groups={desktop.group}", argv=["ln", "-s", "/", str(desktop.pulse_dir / "evil")])
    assert planted.returncode != 0 and "Permission denied" in planted.stderr, planted
    assert not (desktop.pulse_dir / "evil").exists()
