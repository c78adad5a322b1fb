"""What every subcommand gets from `main`: settings, the desktop's facts, the user, the session
registry, and a way to reach the cluster."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kod import errors

from cloudify import settings as s
from cloudify.kube import Kube, load_kubeconfig
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

    @property
    def registry(self) -> Registry:
        return Registry(s.state_dir(self.settings, self.host))

    def kubeconfig(self) -> Path:
        path = s.kubeconfig_path(self.settings, self.host)
        if path is None:
            raise errors.Unavailable(
                "no kubeconfig: cloudify does not know which cluster to use",
                hint=f"set KUBECONFIG, or kubeconfig in {s.settings_path()}; the local cluster: `python -m localenv up`",
            )
        return path

    def connect(self, *, timeout: float = 30.0) -> Kube:
        """A client of the configured cluster (no request made yet)."""
        return Kube(load_kubeconfig(self.kubeconfig(), self.settings.context), timeout=timeout)
