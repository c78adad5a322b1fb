"""A small async REST client for the Kubernetes API, on aiohttp.

The `kubernetes` package is synchronous; vk_bridge only needs get/list/watch/create/patch/delete
on a handful of resources, so it keeps the package for what it does well (reading a kubeconfig or
the in-cluster service account) and speaks REST itself. Retries are data (a backoff tuple from the
settings): only 5xx, 429 and connection errors are retried, `Retry-After` is honoured, and every
retry is logged as "attempt n/N". Kubernetes' Status errors come back as `kod.errors` exceptions
(404 NotFound, 409 Conflict, 422 InvalidInput, ...); 410 Gone as `Expired`.

Usage:

    conn = load_connection(kubeconfig=path, context=None)
    async with KubeClient(conn, backoff=(0.1, 0.5, 1.0)) as kube:
        node = await kube.get("/api/v1/nodes/my-node")
        await kube.patch("/api/v1/nodes/my-node/status", {"status": {...}})
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from kod import errors
from kod.http import _clean_params
from kod.log import get_logger

log = get_logger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
#: Longest Retry-After honoured; a server asking for more gets retried at this.
MAX_RETRY_AFTER = 30.0


class Expired(errors.KodError):
    """410 Gone: the resourceVersion a watch asked for is too old; list again."""

    status = 410
    code = "Expired"


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it."""

    host: str
    ssl_context: ssl.SSLContext | None
    #: Returns the Authorization header value ("Bearer ..."), or None; called per request so
    #: that a rotated in-cluster token is picked up.
    authorization: Callable[[], str | None]
    #: The CA bundle that verifies the API server (also the cluster's CA in most setups).
    ca_file: str | None = None


def load_connection(kubeconfig: Path | None = None, context: str | None = None, *, in_cluster: bool | None = None) -> Connection:
    """Read a kubeconfig (or the in-cluster service account) with the `kubernetes` package.
    `in_cluster=None` means: in-cluster when no kubeconfig is given and the pod's service
    account token exists."""
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    cfg = kclient.Configuration()
    sa_token = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    if in_cluster is None:
        in_cluster = kubeconfig is None and sa_token.exists()
    try:
        if in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            path = kubeconfig or Path(os.path.expanduser("~/.kube/config"))
            kconfig.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (kconfig.ConfigException, OSError) as exc:
        where = "the in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '~/.kube/config'}"
        raise errors.InvalidInput(
            f"cannot load Kubernetes credentials from {where}: {exc}",
            hint="set kube.kubeconfig (KOD_VK_KUBE__KUBECONFIG) to a valid kubeconfig",
        ) from exc

    ctx: ssl.SSLContext | None = None
    if cfg.host.startswith("https"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else ssl._create_unverified_context()
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    def authorization() -> str | None:
        # kubernetes>=30 stores the token under "BearerToken"; older releases under "authorization".
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if value and not value.lower().startswith(("bearer ", "basic ")):
            value = f"Bearer {value}"
        return value or None

    return Connection(host=cfg.host.rstrip("/"), ssl_context=ctx, authorization=authorization, ca_file=cfg.ssl_ca_cert)


def _error(status: int, body: bytes, method: str, path: str) -> errors.KodError:
    message = ""
    try:
        data = json.loads(body)
        message = data.get("message", "") if isinstance(data, dict) else ""
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = body.decode("utf-8", "replace")[:300]
    message = message or f"HTTP {status}"
    text = f"{method} {path}: {message}"
    if status == 410:
        return Expired(text)
    if status == 422:
        return errors.InvalidInput(text)
    if status == 429:
        return errors.Unavailable(text)
    return errors.from_status(status, text)


class KubeClient:
    """The API client. One per process; `stats` counts requests by verb and resource (for the
    idle-cost benchmark), `retry_after` is honoured for 429/503."""

    RETRY_STATUSES: ClassVar[frozenset[int]] = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self, conn: Connection, *, backoff: Sequence[float] = (0.1, 0.5, 1.0), timeout: float = 30.0,
        user_agent: str = "kod-vk",
    ) -> None:
        self.conn = conn
        self.backoff = tuple(backoff)
        self.timeout = timeout
        self.user_agent = user_agent
        self.stats: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Create the HTTP session (idempotent)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.conn.ssl_context if self.conn.ssl_context else False, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        self.open()
        assert self._session is not None
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self.user_agent}
        auth = self.conn.authorization()
        if auth:
            h["Authorization"] = auth
        if content_type:
            h["Content-Type"] = content_type
        return h

    def _count(self, method: str, path: str, *, watch: bool = False) -> None:
        verb = "WATCH" if watch else method
        self.stats[f"{verb} {_resource_of(path)}"] += 1

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """One API call with retries; returns the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        attempts = len(self.backoff) + 1 if retry else 1
        for attempt in range(1, attempts + 1):
            self._count(method, path)
            retry_after: float | None = None
            try:
                async with self.session.request(
                    method,
                    self.conn.host + path,
                    params=_clean_params(params),
                    data=data,
                    headers=self._headers(content_type if data is not None else None),
                    timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                ) as resp:
                    raw = await resp.read()
                    if resp.status < 400:
                        return json.loads(raw) if raw else None
                    exc: errors.KodError = _error(resp.status, raw, method, path)
                    if resp.status not in self.RETRY_STATUSES:
                        raise exc
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                exc = errors.Unavailable(f"{method} {path}: cannot reach the API server at {self.conn.host}: {err or type(err).__name__}")
            if attempt == attempts:
                raise exc
            delay = retry_after if retry_after is not None else self.backoff[attempt - 1]
            log.warning("API call failed, retrying", attempt=f"{attempt}/{attempts}", delay=delay, error=str(exc))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Any:
        """GET that answers None for 404."""
        try:
            return await self.request("GET", path)
        except errors.NotFound:
            return None

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> Any:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def replace(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch_stream(
        self, path: str, *, params: Mapping[str, Any], inactivity_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """One watch request: yields its events ({"type", "object"}) until the server ends the
        stream. Raises `Unavailable` when the connection breaks or stays silent for
        `inactivity_timeout` seconds, `Expired` on 410."""
        self._count("GET", path, watch=True)
        try:
            async with self.session.get(
                self.conn.host + path,
                params=_clean_params({**params, "watch": "true"}),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=inactivity_timeout),
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read(), "WATCH", path)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        obj = event.get("object") or {}
                        raise _error(int(obj.get("code") or 500), json.dumps(obj).encode(), "WATCH", path)
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            raise errors.Unavailable(f"watch {path} broke: {err or type(err).__name__}") from err


def _resource_of(path: str) -> str:
    """'/api/v1/namespaces/x/pods/y/status' -> 'pods/status' (for request statistics)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:
        return "-"
    resource = parts[0]
    if len(parts) >= 3:
        resource += "/" + parts[2]
    return resource


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None

