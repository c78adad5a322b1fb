"""The session's secrets: an SSH client key pair, an SSH host key pair and a VNC password.

Generated fresh for every session (the original made one RSA-4096 pair per run, which takes about
a second; ed25519 takes ~15 ms) and never written anywhere but a private directory that lives for
one ssh-keygen call. They are split between the two sides, and each side gets only its own
(`app_files`, `viewer_files`: two Secrets in the cluster, cloudify/manifests.py):

- the app: the host's private key (its sshd's identity), the client's public key (the only key
  sshd accepts) and the VNC password;
- the viewer: the client's private key, a known_hosts line that pins the host's public key, and
  the VNC password.

So the viewer verifies the app (StrictHostKeyChecking=yes) and the app the viewer, and whoever
reads the viewer's side (the desktop's virtual node, which may read only what its pods mount)
cannot impersonate the app.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kod import apps, errors

#: VNC's own authentication uses the first 8 bytes of the password only (a DES key): the rest
#: would add nothing. Letters and digits so that it survives any shell or URL unquoted.
VNC_PASSWORD_LENGTH = 8
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class KeyPair:
    private: str = field(repr=False)
    public: str


@dataclass(frozen=True)
class Credentials:
    """Everything secret about one session. `repr` never shows a secret."""

    client: KeyPair
    host: KeyPair
    vnc_password: str = field(repr=False)

    def known_hosts(self, pattern: str = "*") -> str:
        """A known_hosts line that trusts exactly this session's host key, at any address (the
        viewer reaches the app through a NodePort, a port-forward or a tunnel)."""
        return f"{pattern} {self.host.public}\n"

    def app_files(self) -> dict[str, str]:
        """What the app side gets, by the images' file names (kod.apps): the host's private key,
        the client's public key as authorized_keys, the VNC password."""
        return {
            apps.SECRET_AUTHORIZED_KEYS: self.client.public + "\n",
            apps.SECRET_HOST_KEY: self.host.private,
            apps.SECRET_VNC_PASSWORD: self.vnc_password,
        }

    def viewer_files(self) -> dict[str, str]:
        """What the viewer side gets: the client's private key, the pinned host key, the VNC
        password. Never the host's private key."""
        return {
            apps.SECRET_SSH_KEY: self.client.private,
            apps.SECRET_KNOWN_HOSTS: self.known_hosts(),
            apps.SECRET_VNC_PASSWORD: self.vnc_password,
        }


def new_password(length: int = VNC_PASSWORD_LENGTH) -> str:
    """A random password of letters and digits."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


async def _keygen(ssh_keygen: str, path: Path, comment: str) -> KeyPair:
    proc = await asyncio.create_subprocess_exec(
        ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise errors.Internal(f"ssh-keygen failed: {err.decode(errors='replace').strip()}")
    return KeyPair(private=path.read_text(), public=path.with_suffix(".pub").read_text().strip())


async def generate(session: str, *, ssh_keygen: str | None = None) -> Credentials:
    """Make the session's two key pairs (concurrently) and its VNC password."""
    tool = ssh_keygen or shutil.which("ssh-keygen")
    if not tool:
        raise errors.Unavailable("ssh-keygen is not installed", hint="apt-get install openssh-client")
    with tempfile.TemporaryDirectory(prefix="kod-keys-") as tmp:
        client, host = await asyncio.gather(
            _keygen(tool, Path(tmp) / "client", f"kod-viewer-{session}"),
            _keygen(tool, Path(tmp) / "host", f"kod-app-{session}"),
        )
    return Credentials(client=client, host=host, vnc_password=new_password())
