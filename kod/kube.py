"""The project's one Kubernetes API client: async REST on aiohttp, used by vk_bridge and cloudify.

Why not the `kubernetes` package's API: it is synchronous and imports every model of the API
(~250 ms); vk_bridge and cloudify need get/list/watch/create/patch/delete on a handful of
resources, followed logs, and the exec/port-forward WebSockets, all on one asyncio loop that
stops cleanly. The package is still used, lazily, for the kubeconfigs only it understands
(`kod.kube_config`).

    conn = load_connection(path)                                   # kod.kube_config
    async with KubeClient(conn, backoff=(0.1, 0.5, 1.0)) as kube:
        node = await kube.get("/api/v1/nodes/my-node")
        pods = await kube.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n"})
        await kube.patch("/api/v1/nodes/my-node/status", {"status": {...}})
        async for line in kube.stream_lines(f"/api/v1/namespaces/{ns}/pods/{name}/log", params={"follow": True}):
            ...

Contracts:
- Errors are the `kod.errors` vocabulary, mapped in `kod.kube_errors` (404 NotFound, 409
  Conflict, 400/422 InvalidInput, 401 Unauthorized, 403 Forbidden with a hint, 410 `Expired`,
  429/5xx and connection failures Unavailable).
- Retries are data: `backoff` is the delay before each retry, so `len(backoff) + 1` attempts.
  Only 429, 5xx (but 501) and connection failures are retried; a Retry-After header replaces the
  delay; every retry is logged as "attempt n/N". Streams (watch, logs, WebSockets) are not
  retried here: their readers resume (`kod.kube_watch`).
- Lines of streams (watch events, logs) are read with `kod.lines`: no line-size limit but a
  64 MiB guard (aiohttp's own line iterator refuses lines over 128 KiB).
- `stats` counts requests by verb and resource ("GET pods", "WATCH pods", "PATCH nodes/status").
- `swap_connection` replaces the credentials of a running client (a rotated client certificate):
  new requests use the new connection at once; the old connections are closed after a drain
  period, so a watch on one breaks once and its reader resumes on the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp

from kod import errors
from kod.kube_config import Connection
from kod.kube_errors import UNREACHABLE_HINT, is_retried, retry_after, status_error
from kod.lines import read_chunks, split_lines
from kod.log import get_logger

log = get_logger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
DEFAULT_BACKOFF = (0.1, 0.5, 1.0)
#: Seconds a watch stream may stay silent before it counts as broken, when the caller gives none.
DEFAULT_INACTIVITY_SECONDS = 330.0
#: The subprotocol of the exec and port-forward WebSockets (channel byte + payload per frame).
CHANNEL_PROTOCOL = "v4.channel.k8s.io"

#: Query parameters: a mapping (None values dropped, booleans as true/false) or pairs, for keys
#: that repeat (exec's `command`).
Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


def query(params: Params | None) -> list[tuple[str, str]] | None:
    """`params` as the query pairs the API server expects."""
    if not params:
        return None
    pairs = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        if value is None:
            continue
        out.append((key, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return out or None


class KubeClient:
    """A connection to one API server. Methods take API paths (`/api/v1/namespaces/kod/pods`)
    and return decoded JSON (None for an empty body). Open on first use or with `async with`;
    the owner calls `close()`."""

    def __init__(
        self, conn: Connection, *, backoff: Sequence[float] = DEFAULT_BACKOFF, timeout: float = 30.0,
        user_agent: str = "kod",
    ) -> None:
        self.conn = conn
        #: Delays before each retry; () never retries.
        self.backoff = tuple(backoff)
        #: Total seconds of one request (not of streams, whose bound is their inactivity).
        self.timeout = timeout
        self.user_agent = user_agent
        #: "VERB resource" -> requests sent (each retry counts), for metrics and benchmarks.
        self.stats: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None
        #: Sessions of replaced connections, closed after their drain period (or by `close`).
        self._retired: set[aiohttp.ClientSession] = set()
        self._closers: set[asyncio.Task[None]] = set()
        #: Streams being read, by session: closing a session alone does not wake their readers.
        self._streams: dict[aiohttp.ClientSession, set[aiohttp.ClientResponse]] = {}

    async def __aenter__(self) -> KubeClient:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Create the HTTP session (idempotent; needs a running loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.conn.ssl_context or False, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        """Close the session and its connections (idempotent), and any retired ones."""
        closers = list(self._closers)
        for task in closers:
            task.cancel()
        await asyncio.gather(*closers, return_exceptions=True)
        for old in list(self._retired):
            await old.close()
        self._retired.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def swap_connection(self, conn: Connection, *, drain_seconds: float = 30.0) -> None:
        """Use `conn` for every request from now on (same server, new credentials: a renewed
        client certificate). Requests and streams already running on the old connections go on
        for `drain_seconds`; then those connections are closed (a watch on one then breaks and
        its reader resumes, on the new credentials). Needs a running loop."""
        old, self._session = self._session, None
        self.conn = conn
        if old is None:
            return
        self._retired.add(old)

        async def retire() -> None:
            try:
                await asyncio.sleep(drain_seconds)
            finally:
                self._retired.discard(old)
                for resp in self._streams.pop(old, set()):
                    resp.content.set_exception(aiohttp.ClientConnectionError("connection retired: new credentials"))
                    resp.close()
                await old.close()

        task = asyncio.get_running_loop().create_task(retire(), name="kube-retire-connection")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    @property
    def session(self) -> aiohttp.ClientSession:
        self.open()
        assert self._session is not None
        return self._session

    def headers(self, *, content_type: str | None = None, accept: str = "application/json") -> dict[str, str]:
        h = {"Accept": accept, "User-Agent": self.user_agent}
        auth = self.conn.authorization()
        if auth:
            h["Authorization"] = auth
        if content_type:
            h["Content-Type"] = content_type
        return h

    def _count(self, verb: str, path: str) -> None:
        self.stats[f"{verb} {resource_of(path)}"] += 1

    def _unreachable(self, what: str, err: BaseException) -> errors.Unavailable:
        detail = str(err) or type(err).__name__
        return errors.Unavailable(f"{what}: cannot reach the Kubernetes API at {self.conn.host}: {detail}", hint=UNREACHABLE_HINT)

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """One API call, retried as the class docstring says (`retry=False`: one attempt, e.g.
        a probe that must answer within `timeout`); returns the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        what = f"{method} {path}"
        attempts = len(self.backoff) + 1 if retry else 1
        limit = timeout or self.timeout
        for attempt in range(1, attempts + 1):
            self._count(method, path)
            delay: float | None = None
            try:
                async with self.session.request(
                    method, self.conn.host + path, params=query(params), data=data,
                    headers=self.headers(content_type=content_type if data is not None else None),
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as resp:
                    raw = await resp.read()
                    if resp.status < 400:
                        return json.loads(raw) if raw else None
                    exc: errors.KodError = status_error(resp.status, raw, what)
                    if not is_retried(resp.status):
                        raise exc
                    delay = retry_after(resp.headers.get("Retry-After"))
            except aiohttp.ClientConnectionError as err:
                exc = self._unreachable(what, err)
            except TimeoutError:
                exc = errors.Unavailable(f"{what}: no answer from {self.conn.host} within {limit:g} s", hint=UNREACHABLE_HINT)
            if attempt == attempts:
                raise exc
            if delay is None:
                delay = self.backoff[attempt - 1]
            log.warning("API call failed, retrying", attempt=f"{attempt}/{attempts}", delay=delay, error=str(exc))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get(self, path: str, *, params: Params | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str, *, params: Params | None = None) -> Any:
        """GET that answers None for 404."""
        try:
            return await self.request("GET", path, params=params)
        except errors.NotFound:
            return None

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> Any:
        """A merge patch by default; `STRATEGIC_PATCH` for lists merged by key."""
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def replace(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def delete(
        self, path: str, body: Any = None, *, grace_seconds: int | None = None, missing_ok: bool = False,
    ) -> Any:
        """Delete one object. Without `body`, DeleteOptions with background propagation (a Job's
        pods go with it; the API's default for Jobs would orphan them) and `grace_seconds` when
        given. `missing_ok`: an object already gone answers None instead of raising NotFound
        (deleting twice is fine)."""
        if body is None:
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
            if grace_seconds is not None:
                body["gracePeriodSeconds"] = grace_seconds
        try:
            return await self.request("DELETE", path, body=body)
        except errors.NotFound:
            if missing_ok:
                return None
            raise

    # -- streams -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tracked(self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> AsyncIterator[None]:
        streams = self._streams.setdefault(session, set())
        streams.add(resp)
        try:
            yield
        finally:
            streams.discard(resp)
            if not streams and self._streams.get(session) is streams:
                del self._streams[session]

    async def watch_stream(
        self, path: str, *, params: Params | None = None, inactivity_timeout: float = DEFAULT_INACTIVITY_SECONDS,
    ) -> AsyncIterator[dict[str, Any]]:
        """One watch request (`params` plus watch=true; the caller gives resourceVersion,
        allowWatchBookmarks and timeoutSeconds): yields its events ({"type", "object"}, bookmarks
        included) until the server ends the stream. Raises `Expired` on 410 (as an answer or an
        ERROR event), the vocabulary's errors for other refusals, and `Unavailable` when the
        connection breaks, a line is not JSON, or nothing arrives for `inactivity_timeout` s."""
        what = f"WATCH {path}"
        self._count("WATCH", path)
        session = self.session
        try:
            async with session.get(
                self.conn.host + path, params=[*(query(params) or []), ("watch", "true")], headers=self.headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=inactivity_timeout),
            ) as resp, self._tracked(session, resp):
                if resp.status >= 400:
                    raise status_error(resp.status, await resp.read(), what)
                async for line in split_lines(read_chunks(resp.content)):
                    try:
                        event = json.loads(line)
                    except ValueError as err:
                        raise errors.Unavailable(f"{what}: the stream sent a line that is not JSON: {line[:100]!r}") from err
                    if not isinstance(event, dict):
                        raise errors.Unavailable(f"{what}: the stream sent a line that is not an event: {line[:100]!r}")
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise status_error(int(status.get("code") or 500), json.dumps(status).encode(), what)
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            raise errors.Unavailable(f"{what}: the stream broke: {str(err) or type(err).__name__}", hint=UNREACHABLE_HINT) from err

    async def stream_lines(self, path: str, *, params: Params | None = None) -> AsyncIterator[str]:
        """A streamed text answer (a pod's log, `follow=true`), line by line without the line
        end, empty lines and a last line without a newline included, until the server ends it.
        Raises the vocabulary's errors before the first line, Unavailable when the stream
        breaks. No inactivity bound: a quiet log is not a broken one."""
        what = f"GET {path}"
        self._count("GET", path)
        session = self.session
        try:
            async with session.get(
                self.conn.host + path, params=query(params), headers=self.headers(accept="*/*"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None),
            ) as resp, self._tracked(session, resp):
                if resp.status >= 400:
                    raise status_error(resp.status, await resp.read(), what)
                async for raw in split_lines(read_chunks(resp.content), keep_empty=True, final=True):
                    yield raw.decode("utf-8", "replace").removesuffix("\r")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            raise errors.Unavailable(f"{what}: the stream broke: {str(err) or type(err).__name__}", hint=UNREACHABLE_HINT) from err

    async def stream_chunks(self, path: str, *, params: Params | None = None, timeout: float | None = None,
                            compressed: bool = True) -> AsyncIterator[bytes]:
        """A raw answer in the chunks the network delivers (for timing a transfer: cloudify.link),
        within `timeout` s in all; `compressed=False` asks the server not to gzip it. Refusals
        raise the vocabulary's errors, a broken or late stream Unavailable. Closing the generator
        early drops the connection (the rest is not read)."""
        what = f"GET {path}"
        self._count("GET", path)
        headers = self.headers(accept="*/*")
        if not compressed:
            headers["Accept-Encoding"] = "identity"
        try:
            async with self.session.get(
                self.conn.host + path, params=query(params), headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as resp:
                if resp.status >= 400:
                    raise status_error(resp.status, await resp.read(), what)
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.close()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            raise errors.Unavailable(f"{what}: {str(err) or type(err).__name__}", hint=UNREACHABLE_HINT) from err

    async def websocket(self, path: str, *, params: Params | None = None) -> aiohttp.ClientWebSocketResponse:
        """Open one of the API server's channel WebSockets (a pod's exec or portforward, protocol
        `CHANNEL_PROTOCOL`); the caller closes it. Refusals raise the vocabulary's errors.
        `kod.kube_channels` speaks the protocol."""
        what = f"CONNECT {path}"
        self._count("CONNECT", path)
        url = self.conn.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + path
        try:
            return await self.session.ws_connect(
                url, params=query(params), protocols=(CHANNEL_PROTOCOL,),
                # "Accept: application/json" makes the API server answer 406 to an upgrade.
                headers=self.headers(accept="*/*"), autoping=True, max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise status_error(exc.status, (exc.message or "").encode(), what) from exc
        except aiohttp.ClientConnectionError as exc:
            raise self._unreachable(what, exc) from exc


def resource_of(path: str) -> str:
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
