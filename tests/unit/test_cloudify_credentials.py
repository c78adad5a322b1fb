"""The session's keys: real ed25519 pairs from ssh-keygen, that belong together."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
