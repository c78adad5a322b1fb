"""Kubeconfig files, built as data (kubectl and the Python client read JSON as YAML)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from localenv.pki import CertPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def build(*, server: str, user: str, creds: CertPair, cluster: str = "kod") -> dict[str, Any]:
    """A kubeconfig for one client certificate, with the certificates embedded (so the file can
    be copied or mounted alone)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(creds.ca)}}],
        "users": [{
            "name": user,
            "user": {"client-certificate-data": _b64(creds.cert), "client-key-data": _b64(creds.key)},
        }],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


def write(path: Path, config: dict[str, Any]) -> bool:
    """Write the kubeconfig (0600) unless the same content is already there; True if written."""
    text = render(config)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return True
