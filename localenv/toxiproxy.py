"""Shopify's toxiproxy: a TCP proxy that adds latency (and other faults) to what passes through it,
driven over its HTTP API. The proving ground's home link (localenv.netlab) adds its round-trip
time with it, since this kernel has tc's rate limiters (tbf, htb) but no netem.

Why toxiproxy: it is maintained (Shopify, v2.12.0, 2025), a single static Go binary built from
the Go module proxy like the cluster's binaries, and it changes delays on live connections
through its API, which the tests need (the 40 ms of a home link, then 2 s for a slow cluster).
Alternatives looked at: netem (not in this kernel), tc's tbf/htb (rates only), socat/haproxy (no
delay), a home-made delaying proxy (the issue asks for an existing tool).

    d = daemon(cache_dir, run_dir, logs_dir)         # toxiproxy-server on 127.0.0.1:8474
    api = Api()                                      # its HTTP API (call it where the daemon runs)
    api.proxy("apiserver", listen="0.0.0.0:16443", upstream="192.0.2.2:6443")
    api.latency("apiserver", "home", ms=20)          # both directions: +40 ms round trip
    api.remove("apiserver", "home")
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kod import errors
from localenv import gobuild, procs
from localenv.k8s import probes

API_PORT = 8474
#: The two directions of a proxied connection, as toxiproxy names them: upstream is client ->
#: server (the desktop's requests), downstream server -> client (the answers).
STREAMS = ("upstream", "downstream")


def binary(cache_dir: Path) -> str:
    return str(cache_dir / f"toxiproxy-{gobuild.TOXIPROXY_VERSION}" / "bin" / "toxiproxy-server")


def daemon(cache_dir: Path, run_dir: Path, logs_dir: Path, *, port: int = API_PORT, name: str = "toxiproxy",
           ready_timeout: float = 30.0) -> procs.Daemon:
    """toxiproxy-server with its API on 127.0.0.1:`port` (start it where its proxies must
    listen: localenv.netns.entered)."""
    return procs.Daemon(
        name=name,
        argv=(binary(cache_dir), "-host", "127.0.0.1", "-port", str(port)),
        run_dir=run_dir,
        logs_dir=logs_dir,
        ready=lambda: probes.ok(f"http://127.0.0.1:{port}/version"),
        ready_timeout=ready_timeout,
        stop_timeout=5.0,
        ports=(port,),
    )


class Api:
    """toxiproxy's HTTP API. Calls open their connection where the calling thread's network is
    (wrap them in localenv.netns.entered for a toxiproxy in another namespace)."""

    def __init__(self, url: str = f"http://127.0.0.1:{API_PORT}", timeout: float = 20.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; a connection that fails or stalls is tried again until `timeout` has
        passed (on a loaded machine a just-restarted toxiproxy can take seconds to answer; every
        call here is idempotent)."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.timeout
        while True:
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw.strip() else None
            except urllib.error.HTTPError as exc:
                raise errors.Internal(f"toxiproxy {method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from exc
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise errors.Unavailable(f"toxiproxy does not answer at {self.url}: {exc}") from exc
                time.sleep(0.2)

    def proxies(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proxies"))

    def proxy(self, name: str, *, listen: str, upstream: str) -> None:
        """Create the proxy, or update it to these addresses (idempotent)."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        if name in self.proxies():
            self._call("POST", f"/proxies/{name}", body)
        else:
            self._call("POST", "/proxies", body)

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/proxies/{proxy}/toxics"))

    def latency(self, proxy: str, name: str, *, ms: float, streams: tuple[str, ...] = STREAMS) -> None:
        """Delay every chunk by `ms` in each of `streams` (a toxic per stream, `<name>-<stream>`);
        replaces toxics of the same name. A toxic that is already so is left alone and one with
        another delay is updated in place: toxiproxy 2.12 changes each live connection's chain
        of toxics in a goroutine of its own, and a toxic added while a removal is still going
        through a connection crashes it (index out of range in ToxicLink.AddToxic), which
        took the home desktop's API server path down mid-suite."""
        attributes = {"latency": int(round(ms)), "jitter": 0}
        wanted = {f"{name}-{stream}": stream for stream in streams}
        existing = {t["name"]: t for t in self.toxics(proxy)
                    if t["name"] == name or t["name"].startswith(f"{name}-")}
        kept = set()
        for toxic_name, toxic in existing.items():
            if toxic_name not in wanted or toxic.get("stream") != wanted[toxic_name] or toxic.get("type") != "latency":
                self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic_name}")
                continue
            kept.add(toxic_name)
            if {k: toxic.get("attributes", {}).get(k) for k in attributes} != attributes:
                self._call("POST", f"/proxies/{proxy}/toxics/{toxic_name}", {"attributes": attributes, "toxicity": 1.0})
        for toxic_name, stream in wanted.items():
            if toxic_name in kept:
                continue
            self._call("POST", f"/proxies/{proxy}/toxics", {
                "name": toxic_name, "type": "latency", "stream": stream, "toxicity": 1.0, "attributes": attributes,
            })

    def remove(self, proxy: str, name: str) -> int:
        """Remove the toxics `name` made; how many there were."""
        gone = 0
        for toxic in self.toxics(proxy):
            if toxic["name"] == name or toxic["name"].startswith(f"{name}-"):
                self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")
                gone += 1
        return gone
