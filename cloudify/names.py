"""A session's identity: its id, the names of its objects, their labels and annotations.

Every object of a session carries `kod.io/session=<id>`, so one label selector finds all of it
(in the cluster and in Docker), and `kod.io/user`, so `cloudify sessions/gc` see only yours.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kod import labels
from kod.apps import App

#: Annotations only cloudify reads (the shared keys are in kod.labels).
A_DESKTOP_HOST = f"{labels.DOMAIN}/desktop-host"   #: host name of the desktop that started it
A_RUN_MODE = f"{labels.DOMAIN}/run-mode"           #: pod, docker or native
A_PROTOCOL = f"{labels.DOMAIN}/protocol"           #: vnc or novnc
A_SECURE = f"{labels.DOMAIN}/secure"               #: "true" when VNC goes through SSH only
A_PERSIST = f"{labels.DOMAIN}/persist"             #: name of the PVC, when -v
ROLE_APP, ROLE_VIEWER, ROLE_DATA = "app", "viewer", "data"
#: Docker label of cloudify's own viewer containers (-r docker), beside kod.labels.D_SESSION.
D_MANAGED_BY_CLOUDIFY = "cloudify"

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_session_id() -> str:
    """8 characters, a letter first (so names built from it are valid DNS labels)."""
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SessionNames:
    """Names and labels of one session's objects."""

    session: str
    app: App
    user: str
    namespace: str

    @property
    def base(self) -> str:
        """Name of the Job, its Secret and its Service: kod-firefox-k3x9a0b2."""
        return f"kod-{self.app.name}-{self.session}"

    @property
    def viewer(self) -> str:
        """Name of the viewer pod, and of the viewer's Secret."""
        return f"{self.base}-viewer"

    @property
    def app_secret(self) -> str:
        """The app's Secret (host private key, authorized key, VNC password)."""
        return self.base

    @property
    def viewer_secret(self) -> str:
        """The viewer's Secret (client private key, pinned host key, VNC password, X cookie)."""
        return self.viewer

    @property
    def container(self) -> str:
        """Name of the local viewer container (-r docker)."""
        return f"{self.base}-viewer"

    @property
    def pvc(self) -> str:
        """The persistent volume of this user and app, shared by all their -v sessions."""
        return pvc_name(self.user, self.app.name)

    def selector(self) -> str:
        return f"{labels.SESSION}={self.session}"

    def labels(self, role: str) -> dict[str, str]:
        return {
            labels.SESSION: self.session,
            labels.APP: self.app.name,
            labels.ROLE: role,
            labels.USER: self.user,
            labels.MANAGED_BY: labels.MANAGED_BY_CLOUDIFY,
        }


def pvc_name(user: str, app: str) -> str:
    """kod-<user>-<app>-data, lower-cased and cut to a valid object name."""
    return f"kod-{user.lower().replace('_', '-').replace('.', '-')}-{app}-data"[:253]


def expires_at(now: datetime, seconds: int) -> str:
    """The EXPIRES_AT annotation value: when leftovers of the session may be collected."""
    return rfc3339(now + timedelta(seconds=seconds))


def user_selector(user: str) -> str:
    return f"{labels.MANAGED_BY}={labels.MANAGED_BY_CLOUDIFY},{labels.USER}={user}"
