"""A small asynchronous Kubernetes API client: what cloudify needs and nothing more.

Why not the official client's synchronous API: cloudify creates several objects at once, follows
two pods with one watch, runs port-forwards and must stop all of it cleanly on Ctrl-C. One asyncio
loop over aiohttp does that without threads, and starts faster (the official client imports every
model of the API). The official package is still used to read kubeconfigs it alone understands
(exec plugins, auth providers).

    kube = await Kube.connect(path_to_kubeconfig)
    pod = await kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    async for kind, obj in kube.watch(f"/api/v1/namespaces/{ns}/pods", label_selector="a=b"):
        ...

Errors are the `kod.errors` vocabulary: 404 NotFound, 409 Conflict, 422/400 InvalidInput,
401 Unauthorized, 403 Forbidden, 5xx/429 and connection failures Unavailable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from kod import errors

#: Seconds a watch stream may stay silent before it counts as broken. The API server closes a
#: watch at `timeoutSeconds`; bookmarks keep a healthy stream talking meanwhile.
WATCH_SERVER_TIMEOUT = 240
WATCH_IDLE_SECONDS = WATCH_SERVER_TIMEOUT + 30
#: Backoff between attempts to list again when the API server does not answer.
WATCH_RETRY_SECONDS = 0.2
WATCH_RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    context: str
    namespace: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext | bool:
        """An SSL context that verifies the server and presents the client certificate."""
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        if self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_data and self.key_data:
            # load_cert_chain reads files only: a private directory that lives for one call.
            with tempfile.TemporaryDirectory(prefix="kod-tls-") as tmp:
                cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
                for path, data in ((cert, self.cert_data), (key, self.key_data)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _read(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    """`<key>-data` (base64) or `<key>` (a file, relative to the kubeconfig)."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(str(entry[f"{key}-data"]))
    if entry.get(key):
        return (base / str(entry[key])).expanduser().read_bytes()
    return None


def load_kubeconfig(path: Path, context: str | None = None) -> KubeConfig:
    """Read a kubeconfig. Client certificates and tokens are read directly; anything else (exec
    plugins, auth providers) goes through the official client's loader."""
    import yaml  # a dependency of the kubernetes package; 40 ms instead of its 250 ms loader

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise errors.InvalidInput(f"cannot read the kubeconfig {path}: {exc}") from exc
    ctx_name = context or doc.get("current-context")

    def by_name(section: str) -> dict[str, dict[str, Any]]:
        return {e.get("name"): e.get(section[:-1]) or {} for e in doc.get(section) or []}

    contexts, clusters, users = by_name("contexts"), by_name("clusters"), by_name("users")
    if not ctx_name or ctx_name not in contexts:
        raise errors.InvalidInput(
            f"kubeconfig {path} has no context {ctx_name!r}", hint="pick one with `context = \"...\"` in the config file"
        )
    ctx = contexts[ctx_name]
    cluster, user = clusters.get(str(ctx.get("cluster")), {}), users.get(str(ctx.get("user")), {})
    if not cluster.get("server"):
        raise errors.InvalidInput(f"kubeconfig {path}: context {ctx_name!r} names no cluster server")
    base = path.parent
    if any(k in user for k in ("exec", "auth-provider", "username")):
        return _load_with_official_client(path, ctx_name, ctx.get("namespace"))
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        context=ctx_name,
        namespace=ctx.get("namespace"),
        ca_file=str((base / cluster["certificate-authority"]).expanduser()) if cluster.get("certificate-authority") else None,
        ca_data=base64.b64decode(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None,
        cert_data=_read(user, "client-certificate", base),
        key_data=_read(user, "client-key", base),
        token=token,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def _load_with_official_client(path: Path, context: str, namespace: str | None) -> KubeConfig:
    from kubernetes import client, config  # slow import: only for the rare kubeconfigs that need it

    conf = client.Configuration()
    config.load_kube_config(config_file=str(path), context=context, client_configuration=conf)  # type: ignore[no-untyped-call]
    token = (conf.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
    return KubeConfig(
        server=conf.host.rstrip("/"),
        context=context,
        namespace=namespace,
        ca_file=conf.ssl_ca_cert,
        cert_data=Path(conf.cert_file).read_bytes() if conf.cert_file else None,
        key_data=Path(conf.key_file).read_bytes() if conf.key_file else None,
        token=token,
        insecure=not conf.verify_ssl,
    )


def _error(status: int, body: bytes, what: str) -> errors.KodError:
    try:
        payload = json.loads(body)
        message = payload.get("message") or payload.get("reason") or f"HTTP {status}"
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()[:300] or f"HTTP {status}"
    text = f"{what}: {message}"
    if status == 404:
        return errors.NotFound(text)
    if status == 409:
        return errors.Conflict(text)
    if status in (400, 422):
        return errors.InvalidInput(text)
    if status == 401:
        return errors.Unauthorized(text, hint="the kubeconfig's credentials were refused")
    if status == 403:
        return errors.Forbidden(text, hint="your cluster user lacks the permission; ask the cluster's admin")
    if status == 410:
        return Gone(text)
    return errors.Unavailable(text)


class Gone(errors.Conflict):
    """410: a watch's resourceVersion is too old; list again."""


class Kube:
    """An API server connection. Methods take API paths (`/api/v1/namespaces/kod/pods`)."""

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self._ssl = config.ssl_context()
        self._headers = {"Accept": "application/json"}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        self._timeout = timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self.config.server + path + (("?" + urlencode(query)) if query else "")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer. Raises the vocabulary's errors."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self._session.request(
                method,
                self.url(path, params),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(resp.status, raw, f"{method} {path}")
                return json.loads(raw) if raw else {}
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(
                f"cannot reach the Kubernetes API at {self.config.server}: {exc}",
                hint="is the cluster up? (`python -m localenv status` for the local one)",
            ) from exc
        except TimeoutError as exc:
            raise errors.Unavailable(f"{method} {path}: no answer from {self.config.server} within {timeout or self._timeout:.0f} s") from exc

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def delete(self, path: str, *, propagation: str = "Background", grace: int | None = None) -> dict[str, Any] | None:
        """Delete; None when it was already gone (deleting twice is fine)."""
        opts: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace is not None:
            opts["gracePeriodSeconds"] = grace
        try:
            return await self.request("DELETE", path, body=opts)
        except errors.NotFound:
            return None

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def watch(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """List, then watch, forever: yields ("ADDED"|"MODIFIED"|"DELETED", object). The initial
        list comes as ADDED events; after a broken stream or a 410 it lists again (objects that
        vanished meanwhile come as DELETED), so the caller never misses a final state; an API
        server that does not answer is retried with backoff. Refusals (403, 401) are raised. The
        caller bounds it with a timeout or stops iterating."""
        known: dict[str, dict[str, Any]] = {}
        sel = {"labelSelector": label_selector, "fieldSelector": field_selector}
        backoff = WATCH_RETRY_SECONDS
        while True:
            try:
                listing = await self.request("GET", path, params=sel)
            except errors.Unavailable:
                # The API server restarts, or the network blinks: a session outlives that.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WATCH_RETRY_MAX_SECONDS)
                continue
            backoff = WATCH_RETRY_SECONDS
            rv = listing.get("metadata", {}).get("resourceVersion")
            seen: dict[str, dict[str, Any]] = {}
            for obj in listing.get("items", []):
                uid = obj["metadata"]["uid"]
                seen[uid] = obj
                yield ("MODIFIED" if uid in known else "ADDED"), obj
            for uid, obj in known.items():
                if uid not in seen:
                    yield "DELETED", obj
            known = seen
            try:
                async for kind, obj in self.watch_from(path, rv, **sel):
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        known.pop(uid, None)
                    else:
                        known[uid] = obj
                    yield kind, obj
            except (Gone, errors.Unavailable, aiohttp.ClientPayloadError, TimeoutError):
                await asyncio.sleep(WATCH_RETRY_SECONDS)  # then list again: a fresh, complete picture

    async def watch_from(
        self, path: str, rv: str | None, *, labelSelector: str | None = None, fieldSelector: str | None = None  # noqa: N803
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """One watch stream from resourceVersion `rv` (events after it), until the server ends it.
        Raises Gone when `rv` is too old, Unavailable when the stream breaks."""
        sel = {"labelSelector": labelSelector, "fieldSelector": fieldSelector}
        params = {**sel, "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": WATCH_SERVER_TIMEOUT}
        try:
            async with self._session.get(
                self.url(path, params), timeout=aiohttp.ClientTimeout(total=None, sock_read=WATCH_IDLE_SECONDS)
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read(), f"watch {path}")
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        raise _error(int(status.get("code") or 500), json.dumps(status).encode(), f"watch {path}")
                    yield event["type"], event["object"]
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"watch {path} broke: {exc}") from exc

    async def stream_lines(self, path: str, **params: Any) -> AsyncIterator[str]:
        """A streamed text answer (a followed log), line by line, until the server ends it."""
        try:
            async with self._session.get(
                self.url(path, params), timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read(), f"GET {path}")
                async for raw in resp.content:
                    yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"stream {path} broke: {exc}") from exc

    async def exec_lines(self, namespace: str, pod: str, container: str, command: list[str]) -> AsyncIterator[str]:
        """Run a command in a container (the API server's exec, WebSocket v4 channel protocol:
        channel 1 is stdout) and yield its output lines until it ends."""
        params = [("container", container), ("stdout", "1"), ("stderr", "0"), ("stdin", "0"), ("tty", "0")]
        params += [("command", part) for part in command]
        url = self.config.server + f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?" + urlencode(params)
        try:
            ws = await self._session.ws_connect(
                url.replace("https://", "wss://", 1).replace("http://", "ws://", 1),
                protocols=("v4.channel.k8s.io",), headers={"Accept": "*/*"}, max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _error(exc.status, (exc.message or "").encode(), f"exec in {namespace}/{pod}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"exec in {namespace}/{pod}: {exc}") from exc
        buffer = b""
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data or msg.data[0] != 1:
                    continue
                buffer += msg.data[1:]
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line.decode("utf-8", "replace")
        finally:
            await ws.close()

    async def portforward(self, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        """Open the API server's port-forward to one port of a pod (WebSocket, v4 channel
        protocol: channel 0 carries data, channel 1 errors; each starts with the port number)."""
        url = self.url(f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward", {"ports": port})
        try:
            return await self._session.ws_connect(
                url.replace("https://", "wss://", 1).replace("http://", "ws://", 1),
                protocols=("v4.channel.k8s.io",),
                # The session's default "Accept: application/json" makes the API server answer 406.
                headers={"Accept": "*/*"},
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _error(exc.status, (exc.message or "").encode(), f"port-forward to {namespace}/{pod}:{port}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"port-forward to {namespace}/{pod}:{port}: {exc}") from exc
