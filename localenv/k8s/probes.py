"""Readiness probes: small HTTP(S) GETs with short timeouts."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path


def get(url: str, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
        timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `url`; verifies the server against `ca` and presents `cert`/`key` when given."""
    ctx = None
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ok(url: str, **kwargs: object) -> bool:
    """True when `url` answers 200 (any exception means "not yet")."""
    try:
        status, _ = get(url, **kwargs)  # type: ignore[arg-type]
    except (OSError, ssl.SSLError):
        return False
    return status == 200
