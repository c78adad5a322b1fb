"""The session's keys: real ed25519 pairs from ssh-keygen, that belong together."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kod import apps

from cloudify import credentials

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen (openssh-client)")


async def test_fresh_key_pairs_and_password_per_session(tmp_path: Path) -> None:
    a = await credentials.generate("s1")
    b = await credentials.generate("s2")
    assert a.client.public != b.client.public and a.host.public != b.host.public
    assert a.client.public.startswith("ssh-ed25519 ") and a.host.public.startswith("ssh-ed25519 ")
    assert len(a.vnc_password) == 8 and a.vnc_password.isalnum() and a.vnc_password != b.vnc_password
    key = tmp_path / "key"
    key.write_text(a.client.private)
    key.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], check=True, capture_output=True, text=True).stdout
    assert derived.split()[:2] == a.client.public.split()[:2]
    assert "PRIVATE" not in repr(a) and a.vnc_password not in repr(a)


async def test_known_hosts_pins_the_host_key_for_any_address(tmp_path: Path) -> None:
    creds = await credentials.generate("s3")
    known = tmp_path / "known_hosts"
    known.write_text(creds.known_hosts())
    for host in ("[192.0.2.7]:31022", "kod-app", "127.0.0.1"):
        found = subprocess.run(["ssh-keygen", "-F", host, "-f", str(known)], capture_output=True, text=True)
        assert found.returncode == 0, host


async def test_the_viewer_side_pins_the_apps_host_key_without_holding_it(tmp_path: Path) -> None:
    creds = await credentials.generate("s4")
    app, viewer = creds.app_files(), creds.viewer_files()
    assert set(app) == {apps.SECRET_HOST_KEY, apps.SECRET_AUTHORIZED_KEYS, apps.SECRET_VNC_PASSWORD}
    assert set(viewer) == {apps.SECRET_SSH_KEY, apps.SECRET_KNOWN_HOSTS, apps.SECRET_VNC_PASSWORD}
    # Exactly one private key each side, and never the other side's.
    assert [k for k, v in viewer.items() if "PRIVATE KEY" in v] == [apps.SECRET_SSH_KEY]
    assert [k for k, v in app.items() if "PRIVATE KEY" in v] == [apps.SECRET_HOST_KEY]
    assert all(creds.host.private not in text for text in viewer.values())
    assert all(creds.client.private not in text for text in app.values())
    host_key = tmp_path / "host"
    host_key.write_text(app[apps.SECRET_HOST_KEY])
    host_key.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], check=True, capture_output=True, text=True).stdout
    pinned = viewer[apps.SECRET_KNOWN_HOSTS]
    assert pinned.split()[1:3] == derived.split()[:2]  # the viewer trusts exactly the app's key
