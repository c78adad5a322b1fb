"""What every subcommand gets from `main`: settings, the desktop's facts, the user, the session
registry, and a way to reach the cluster."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kod import errors, tokens
from kod.kube import KubeClient
from kod.kube_config import load_connection

from cloudify import settings as s
from cloudify.state import Registry


@dataclass
class Context:
    settings: s.CloudifySettings
    host: s.HostEnv
    out: TextIO
    err: TextIO
    user: str = ""
    hostname: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        if not self.user:
            self.user = s.user_name(self.settings, self.host)
        # Resolved once: every command reads settings.namespace.
        self.settings.namespace = s.namespace(self.settings, self.user)

    @property
    def registry(self) -> Registry:
        return Registry(s.state_dir(self.settings, self.host))

    def kubeconfig(self) -> Path:
        path = s.kubeconfig_path(self.settings, self.host, self.user)
        if path is None:
            raise errors.Unavailable(
                "no kubeconfig: cloudify does not know which cluster to use, nor who you are in it",
                hint=f"set KUBECONFIG, or kubeconfig in {s.settings_path()}, to your own credentials; the local "
                f"cluster writes yours with `python -m localenv up --demo` "
                f"({s.LOCALENV_USER_KUBECONFIG.format(user=self.user)})",
            )
        return path

    def connect(self, *, timeout: float = 30.0) -> KubeClient:
        """A client of the configured cluster (no request made yet). No retries (`backoff=()`):
        a CLI says at once that the cluster does not answer, and falls back to a local app;
        its watches resume on their own."""
        path = self.kubeconfig()
        # It holds the user's cluster credentials: refused when others (or its group) may read it.
        tokens.check_private(path, what="kubeconfig")
        conn = load_connection(path, self.settings.context, in_cluster=False)
        return KubeClient(conn, backoff=(), timeout=timeout, user_agent="kod-cloudify")
