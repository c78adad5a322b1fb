"""The kubelet HTTPS API that the API server calls: `kubectl logs` (and `/metrics`).

    GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&limitBytes&timestamps
                                                     &sinceSeconds&sinceTime&previous
        -> 200 text/plain (streamed when follow); 400 bad query; 404 unknown pod/container
    GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}?command=..&input&output&error&tty
    GET|POST /attach/{namespace}/{pod}[/{uid}]/{container}?input&output&error&tty
        -> 101 SPDY/3.1 (remotecommand v1..v4, `kod.remotecommand`); 400 bad query or no
           upgrade; 403 no protocol in common; 404 unknown pod/container; 501 no streams
    GET|POST /portForward/{namespace}/{pod}[/{uid}]
        -> 101 SPDY/3.1 (portforward.k8s.io, `kod.portforward`)
    GET /metrics        -> 200 text/plain: vk_bridge's API request counters (Prometheus format)
    GET /stats/summary  -> 200 the Summary API (stats/v1alpha1) of the desktop and its pods
    GET /metrics/resource -> 200 text/plain: the kubelet's resource metrics (metrics-server's
                           source for `kubectl top`); both 501 without a `ResourceUsage`
                           provider, 503 when it cannot answer (vk_bridge.stats)
    GET /healthz        -> 200 "ok"
    /run, /cri, /checkpoint, /debug -> 501 (not supported on the desktop node)

Streams go to the provider (`ContainerStreams`: InterLink, then the sidecar, as `kod.streams`
WebSockets); whatever is refused before the 101 (unknown pod, container not running) is a
Status answer, never a hang. After the 101 the connection is the SPDY session's.

Errors are Kubernetes Status bodies (kind Status, reason, message, code), which the API server
relays and kubectl prints.

Only callers the cluster authenticates get in, as with the kubelet's webhook mode: a client
certificate signed by the cluster's client CA (the API server's own `--kubelet-client-certificate`)
or a bearer token the TokenReview API accepts; then a SubjectAccessReview must allow the verb on
`nodes/<subresource>` of this node (containerLogs -> nodes/proxy, metrics and metrics/resource ->
nodes/metrics, stats/summary -> nodes/stats, healthz -> nodes/healthz or nodes/proxy).

Answers are cached like the kubelet's webhook authenticator and authorizer do (their defaults:
token answers 2 min, allowed reviews 5 min, denied 30 s): an accepted token for
`token_cache_seconds` (120), a rejected one for `token_failure_cache_seconds` (10; the kubelet
keeps those 2 min too), allowed and denied SubjectAccessReviews for 300 and 30 s. Tokens are
keyed by their SHA-256, never kept in clear. A review that failed (API server unreachable) is not
cached. One TokenReview serves every concurrent request with the same token, and reviews of
tokens not in the cache pass a token bucket (`token_reviews_per_second`, `token_review_burst`):
beyond it callers get 429 with Retry-After, so a flood of made-up tokens costs the API server a
bounded number of TokenReviews. (The API server itself calls with its client certificate, which
needs no review.)

Nobody holds a connection without asking: from the TCP accept, a caller has `header_timeout`
seconds (10) to finish the TLS handshake and send a request's headers, else the connection is
closed (the kubelet's Go server would wait 4 h, its ReadTimeout). A refused request (401, 403,
429) closes its connection after the answer, so a caller that is not let in cannot keep one
alive to try again slowly. Once a request is in, streams keep their own timeouts (the client's
SPDY streams within `stream_creation_timeout`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kod import errors, portforward, remotecommand, spdy, streams, wire
from kod.http import request_id_middleware
from kod.kube import KubeClient
from kod.log import get_logger, pod_context
from vk_bridge import stats as usage
from vk_bridge.provider import ContainerStreams, LogsSource, ResourceUsage

log = get_logger(__name__)

PROVIDER: web.AppKey[LogsSource] = web.AppKey("provider")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
KUBE: web.AppKey[KubeClient] = web.AppKey("kube")
#: How long a streaming client may take to open its SPDY streams (the kubelet's default).
STREAM_TIMEOUT: web.AppKey[float] = web.AppKey("stream_timeout")
#: The previous CPU readings, for the Summary API's usageNanoCores.
CPU_RATES: web.AppKey[usage.CpuRates] = web.AppKey("cpu_rates")

_BOOL = {"true": True, "1": True, "false": False, "0": False}
_INT_FIELDS = ("tailLines", "limitBytes", "sinceSeconds")
_BOOL_FIELDS = ("follow", "previous", "timestamps")
UNSUPPORTED = ("run", "cri", "checkpoint", "debug")
#: Seconds from a connection's accept to its first request's headers (TLS handshake included).
HEADER_TIMEOUT = 10.0
#: Answers after which the connection is closed: the caller was not let in.
_REFUSALS = (401, 403, 429)


def parse_log_options(query: Mapping[str, str]) -> wire.LogOptions:
    """The query string of /containerLogs as typed options. Unknown parameters are ignored, as the
    kubelet does; malformed values are InvalidInput."""
    data: dict[str, Any] = {}
    for key in _BOOL_FIELDS:
        if key in query:
            value = query[key].lower()
            if value not in _BOOL:
                raise errors.InvalidInput(f"{key} must be true or false, not {query[key]!r}")
            data[key] = _BOOL[value]
    for key in _INT_FIELDS:
        if key in query and query[key] != "":
            try:
                data[key] = int(query[key])
            except ValueError as exc:
                raise errors.InvalidInput(f"{key} must be an integer, not {query[key]!r}") from exc
    if query.get("sinceTime"):
        try:
            data["sinceTime"] = datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise errors.InvalidInput(f"sinceTime must be an RFC 3339 time, not {query['sinceTime']!r}") from exc
    if data.get("sinceSeconds") is not None and data.get("sinceTime") is not None:
        raise errors.InvalidInput("at most one of sinceTime or sinceSeconds may be specified")
    stream = query.get("stream")
    if stream not in (None, "", "All"):
        raise errors.InvalidInput(f"stream={stream} is not supported: this node returns stdout and stderr together")
    try:
        return wire.LogOptions.model_validate(data)
    except ValidationError as exc:
        from kod.http import validation_message

        raise errors.InvalidInput(validation_message(exc)) from exc


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, list[str]] = field(default_factory=dict)


def subresource_for(path: str) -> str:
    """The kubelet's mapping from a request path to the nodes/<subresource> it authorizes."""
    first = path.strip("/").split("/", 1)[0]
    return {"metrics": "metrics", "stats": "stats", "logs": "log", "healthz": "healthz"}.get(first, "proxy")


def verb_for(method: str) -> str:
    return {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "get")


class TooManyRequests(errors.Unavailable):
    """Throttled: try again after `retry_after` seconds (429 with Retry-After)."""

    status = 429
    code = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> float:
        """Take one: 0.0 when there was one, else the seconds until there is."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class TtlCache(OrderedDict[Any, tuple[float, Any]]):
    """key -> value until a deadline; at most `size` entries (the oldest go first)."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        super().__init__()
        self.size, self.clock = size, clock

    def lookup(self, key: Any) -> tuple[bool, Any]:
        """(True, value) when cached and fresh."""
        hit = self.get(key)
        if hit is None:
            return False, None
        if hit[0] <= self.clock():
            del self[key]
            return False, None
        return True, hit[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        self[key] = (self.clock() + ttl, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Authenticator:
    """Authentication (client cert or TokenReview) and authorization (SubjectAccessReview), with
    the caches and the TokenReview budget the module docstring describes. `reviews` counts the
    TokenReviews sent."""

    def __init__(
        self, kube: KubeClient, node_name: str, *, token_ttl: float = 120.0, token_failure_ttl: float = 10.0,
        allowed_ttl: float = 300.0, denied_ttl: float = 30.0, reviews_per_second: float = 5.0, burst: int = 20,
        cache_size: int = 4096, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.token_ttl, self.token_failure_ttl = token_ttl, token_failure_ttl
        self.allowed_ttl, self.denied_ttl = allowed_ttl, denied_ttl
        self.clock = clock
        self.reviews = 0
        self._tokens = TtlCache(cache_size, clock)
        self._access = TtlCache(cache_size, clock)
        self._bucket = TokenBucket(reviews_per_second, burst, clock)
        self._inflight: dict[bytes, asyncio.Task[UserInfo | None]] = {}
        self._throttled_logged = -math.inf

    async def user_from_token(self, token: str) -> UserInfo:
        """The user a bearer token stands for; Unauthorized when the cluster rejects it,
        TooManyRequests when the review budget is spent."""
        key = hashlib.sha256(token.encode()).digest()
        hit, info = self._tokens.lookup(key)
        if not hit:
            task = self._inflight.get(key)
            if task is None:
                wait = self._bucket.take()
                if wait:
                    now = self.clock()
                    if now - self._throttled_logged > 10:
                        self._throttled_logged = now
                        log.warning("kubelet API: too many unknown bearer tokens, TokenReviews throttled", retry_after=round(wait, 2))
                    raise TooManyRequests("too many requests with unknown bearer tokens; try again later", retry_after=wait)
                task = asyncio.get_running_loop().create_task(self._review(key, token))
                self._inflight[key] = task
            info = await asyncio.shield(task)
        if info is None:
            raise errors.Unauthorized("the bearer token was not accepted by the cluster")
        assert isinstance(info, UserInfo)
        return info

    async def _review(self, key: bytes, token: str) -> UserInfo | None:
        try:
            self.reviews += 1
            review = await self.kube.create(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            )
            status = (review or {}).get("status") or {}
            if not status.get("authenticated"):
                self._tokens.put(key, None, self.token_failure_ttl)
                return None
            user = status.get("user") or {}
            info = UserInfo(
                name=user.get("username", ""), groups=tuple(user.get("groups") or ()), uid=user.get("uid", ""),
                extra=user.get("extra") or {},
            )
            self._tokens.put(key, info, self.token_ttl)
            return info
        finally:
            self._inflight.pop(key, None)

    async def authorize(self, user: UserInfo, verb: str, subresource: str) -> bool:
        extra = tuple(sorted((k, tuple(v)) for k, v in user.extra.items()))
        key = (user.name, user.groups, user.uid, extra, verb, subresource)
        hit, allowed = self._access.lookup(key)
        if hit:
            return bool(allowed)
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "resourceAttributes": {
                "verb": verb, "resource": "nodes", "subresource": subresource, "name": self.node_name, "version": "v1",
            },
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = dict(user.extra)
        review = await self.kube.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        allowed = bool(((review or {}).get("status") or {}).get("allowed"))
        self._access.put(key, allowed, self.allowed_ttl if allowed else self.denied_ttl)
        return allowed


def user_from_peercert(peercert: Mapping[str, Any] | None) -> UserInfo | None:
    """The Kubernetes user of a verified client certificate: CN is the name, O the groups."""
    if not peercert:
        return None
    name, groups = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
            elif key == "organizationName":
                groups.append(value)
    return UserInfo(name=name, groups=tuple(groups)) if name else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Kubernetes' reason for each status code, for Status bodies.
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 429: "TooManyRequests", 501: "NotImplemented", 503: "ServiceUnavailable"}


def status_response(code: int, message: str) -> web.Response:
    """A Kubernetes Status body: the API server relays it and kubectl prints its message (any
    other body becomes "the server rejected our request for an unknown reason")."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": _REASONS.get(code, "InternalError"), "code": code}
    return web.json_response(body, status=code)


class HeaderDeadlines:
    """Connections that have not yet sent a request's headers, each closed when its `timeout`
    (counted from the accept, so the TLS handshake is in it) passes first."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._timers: dict[asyncio.BaseProtocol, asyncio.TimerHandle] = {}

    def protocols(self, make: Callable[[], web.RequestHandler]) -> Callable[[], web.RequestHandler]:
        """A protocol factory for `loop.create_server`: `make`'s handlers, each on a deadline."""
        loop = asyncio.get_running_loop()

        def protocol() -> web.RequestHandler:
            handler = make()
            self._timers[handler] = loop.call_later(self.timeout, self._expire, handler)
            return handler

        return protocol

    def _expire(self, handler: web.RequestHandler) -> None:
        if self._timers.pop(handler, None) is not None:
            handler.force_close()

    def met(self, protocol: asyncio.BaseProtocol | None) -> None:
        """A request's headers arrived on the connection of `protocol`."""
        timer = self._timers.pop(protocol, None) if protocol is not None else None
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._timers)


DEADLINES: web.AppKey[HeaderDeadlines] = web.AppKey("header_deadlines")


@web.middleware
async def header_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[DEADLINES].met(request.protocol)
    return await handler(request)


@web.middleware
async def status_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The vocabulary's errors as Status bodies; never a 500 for bad input; the connection of a
    refused request closed after the answer."""
    response = await _status_errors(request, handler)
    if response.status in _REFUSALS:
        response.force_close()
    return response


async def _status_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return status_response(exc.status, exc.reason or "error")
    except TooManyRequests as exc:
        response = status_response(exc.status, str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    except remotecommand.NegotiationFailed as exc:
        response = status_response(exc.status, str(exc))
        for protocol in exc.supported:
            response.headers.add(remotecommand.ACCEPTED_HEADER, protocol)
        return response
    except errors.KodError as exc:
        if exc.status >= 500:
            log.warning("kubelet API request failed", error=exc.code, message=str(exc), path=request.path)
        return status_response(exc.status, str(exc))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error in the kubelet API", path=request.path)
        return status_response(500, "internal error; see vk_bridge's log")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    user = None
    if request.transport is not None:
        user = user_from_peercert(request.transport.get_extra_info("peercert"))
    if user is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthorized("authenticate with a client certificate from the cluster's CA or a bearer token")
        user = await auth.user_from_token(token.strip())
    verb, sub = verb_for(request.method), subresource_for(request.path)
    allowed = await auth.authorize(user, verb, sub)
    if not allowed and sub == "healthz":
        allowed = await auth.authorize(user, verb, "proxy")
    if not allowed:
        raise errors.Forbidden(
            f"user {user.name!r} is not allowed to {verb} nodes/{sub} of node {auth.node_name!r}"
        )
    return await handler(request)


async def container_logs(request: web.Request) -> web.StreamResponse:
    """GET /containerLogs/{namespace}/{pod}/{container}: the container's log, streamed with follow."""
    provider = request.app[PROVIDER]
    ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
    options = parse_log_options(request.query)
    status = await provider.get_pod_status(ns, pod)
    names = {c.name for c in status.containerStatuses} | {c.name for c in status.initContainerStatuses}
    if names and container not in names:
        raise errors.NotFound(f"container {container} is not valid for pod {pod}")
    chunks = provider.logs(ns, pod, container, options).__aiter__()
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    try:
        if options.follow:
            # Headers go out at once so that `kubectl logs -f` of a quiet container connects.
            await response.prepare(request)
        async for chunk in chunks:
            if not response.prepared:
                await response.prepare(request)
            await response.write(chunk)
        if not response.prepared:
            await response.prepare(request)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except errors.KodError:
        if not response.prepared:
            raise
        log.warning("log stream ended early", namespace=ns, pod=pod, container=container)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await response.write_eof()
    return response


async def _check_container(request: web.Request, ns: str, pod: str, container: str) -> None:
    """NotFound for a pod or container this node does not run (before any upgrade)."""
    status = await request.app[PROVIDER].get_pod_status(ns, pod)
    uid = request.match_info.get("uid")
    if uid and status.uid and uid != status.uid:
        raise errors.NotFound(f"pod {ns}/{pod} with uid {uid} not found")
    names = {c.name for c in status.containerStatuses} | {c.name for c in status.initContainerStatuses}
    if names and container not in names:
        raise errors.NotFound(f"container {container} is not valid for pod {pod}")


def _require_upgrade(request: web.Request) -> None:
    if not spdy.upgrade_requested(request):
        raise errors.InvalidInput(
            "unable to upgrade: missing upgrade headers in request: this kubelet streams over "
            f"Upgrade: {spdy.UPGRADE} only"
        )


def _no_streams(request: web.Request) -> web.Response:
    what = request.path.strip("/").split("/", 1)[0]
    return status_response(501, f"{what} is not supported by this node's provider")


async def exec_or_attach(request: web.Request) -> web.StreamResponse:
    """/exec and /attach: check, open the provider's stream, upgrade, then carry the client's
    SPDY streams to it until the process ends (the error stream says how)."""
    provider = request.app[PROVIDER]
    if not isinstance(provider, ContainerStreams):
        return _no_streams(request)
    exec_ = request.path.startswith("/exec/")
    ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
    options = remotecommand.options_from_query(request.query, exec_=exec_)
    await _check_container(request, ns, pod, container)
    _require_upgrade(request)
    protocol = remotecommand.negotiate(request.headers.getall(remotecommand.PROTOCOL_HEADER, []))
    opened = provider.exec if exec_ else provider.attach
    channels = await opened(ns, pod, container, options)
    bound = log.bind(**pod_context(ns, pod, container=container), stream="exec" if exec_ else "attach")
    try:
        session = await spdy.accept_upgrade(
            request, {remotecommand.PROTOCOL_HEADER: protocol} if protocol else {}
        )
        async with session:
            try:
                found = await remotecommand.wait_for_streams(
                    session, protocol, options, timeout=request.app[STREAM_TIMEOUT]
                )
            except (TimeoutError, ConnectionError) as exc:
                bound.info("the client did not open its streams", error=str(exc) or type(exc).__name__)
            else:
                result = await remotecommand.bridge(found, channels, session)
                bound.debug("stream ended", exit_code=result.exitCode if result else None)
    finally:
        await channels.close()
    assert session.response is not None
    return session.response


async def port_forward(request: web.Request) -> web.StreamResponse:
    """/portForward: upgrade, then one provider stream per connection the client opens."""
    provider = request.app[PROVIDER]
    if not isinstance(provider, ContainerStreams):
        return _no_streams(request)
    ns, pod = request.match_info["namespace"], request.match_info["pod"]
    status = await provider.get_pod_status(ns, pod)
    uid = request.match_info.get("uid")
    if uid and status.uid and uid != status.uid:
        raise errors.NotFound(f"pod {ns}/{pod} with uid {uid} not found")
    _require_upgrade(request)
    offered = request.headers.getall(portforward.PROTOCOL_HEADER, [])
    remotecommand.negotiate(offered or [portforward.PROTOCOL], (portforward.PROTOCOL,))

    async def dial(port: int) -> streams.Channels:
        return await provider.port_forward(ns, pod, port)

    session = await spdy.accept_upgrade(request, {portforward.PROTOCOL_HEADER: portforward.PROTOCOL})
    async with session:
        await portforward.serve(session, dial, pod=f"{ns}/{pod}", pair_timeout=request.app[STREAM_TIMEOUT])
    assert session.response is not None
    return session.response


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: counters of the Kubernetes API requests vk_bridge made."""
    lines = [
        "# HELP kod_vk_api_requests_total Requests vk_bridge sent to the Kubernetes API.",
        "# TYPE kod_vk_api_requests_total counter",
    ]
    for key, count in sorted(request.app[KUBE].stats.items()):
        verb, _, resource = key.partition(" ")
        lines.append(f'kod_vk_api_requests_total{{verb="{verb}",resource="{resource}"}} {count}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _usage(request: web.Request) -> wire.UsageReport:
    provider = request.app[PROVIDER]
    if not isinstance(provider, ResourceUsage):
        raise web.HTTPNotImplemented(reason="resource usage is not offered by this node's provider")
    return await provider.stats()


async def stats_summary(request: web.Request) -> web.Response:
    """GET /stats/summary: the Summary API (stats/v1alpha1)."""
    report = await _usage(request)
    body = usage.summary(report, node_name=request.app[AUTH].node_name, rates=request.app[CPU_RATES])
    return web.json_response(body)


async def resource_metrics(request: web.Request) -> web.Response:
    """GET /metrics/resource: the kubelet's resource metrics, for metrics-server."""
    report = await _usage(request)
    # Every scrape is a reading for the Summary API's rates too: its next caller gets
    # usageNanoCores from metrics-server's last scrape rather than none.
    usage.summary(report, node_name=request.app[AUTH].node_name, rates=request.app[CPU_RATES])
    return web.Response(body=usage.resource_metrics(report).encode(), headers={"Content-Type": usage.PROMETHEUS_CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def not_supported(request: web.Request) -> web.Response:
    what = request.path.strip("/").split("/", 1)[0]
    return status_response(
        501,
        f"{what} is not supported on the desktop's virtual node: its containers run in the desktop's "
        "Docker engine; use `kubectl logs`, or `docker exec` on the desktop",
    )


def create_app(
    *, provider: LogsSource, kube: KubeClient, auth: Authenticator,
    stream_creation_timeout: float = remotecommand.STREAM_CREATION_TIMEOUT, header_timeout: float = HEADER_TIMEOUT,
) -> web.Application:
    """The kubelet API application (TLS is added by the server that runs it, `start_server`).
    Exec, attach and port-forward are served when `provider` is also a `ContainerStreams`."""
    app = web.Application(middlewares=[
        header_deadline_middleware, request_id_middleware, status_error_middleware, auth_middleware,
    ])
    app[DEADLINES] = HeaderDeadlines(header_timeout)
    app[PROVIDER] = provider
    app[KUBE] = kube
    app[AUTH] = auth
    app[STREAM_TIMEOUT] = stream_creation_timeout
    app[CPU_RATES] = usage.CpuRates()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    for name in ("exec", "attach"):
        for path in (f"/{name}/{{namespace}}/{{pod}}/{{container}}", f"/{name}/{{namespace}}/{{pod}}/{{uid}}/{{container}}"):
            app.router.add_get(path, exec_or_attach, allow_head=False)
            app.router.add_post(path, exec_or_attach)
    for path in ("/portForward/{namespace}/{pod}", "/portForward/{namespace}/{pod}/{uid}"):
        app.router.add_get(path, port_forward, allow_head=False)
        app.router.add_post(path, port_forward)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/resource", resource_metrics)
    app.router.add_get("/stats/summary", stats_summary)
    app.router.add_get("/healthz", healthz)
    for name in UNSUPPORTED:
        app.router.add_route("*", f"/{name}", not_supported)
        app.router.add_route("*", f"/{name}/{{tail:.*}}", not_supported)
    return app


class _DeadlineSite(web.BaseSite):
    """A TCP site whose connections are on the app's HeaderDeadlines (an app of `create_app`;
    another app's connections have none)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, ssl_context: Any,
                 deadlines: HeaderDeadlines | None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._deadlines = host, port, deadlines
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        deadlines = self._deadlines
        listener = await asyncio.get_running_loop().create_server(
            server if deadlines is None else deadlines.protocols(server), self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=deadlines.timeout if deadlines is not None and self._ssl_context else None,
            backlog=self._backlog,
        )
        self._server = listener
        if listener.sockets:
            self.bound_port = int(listener.sockets[0].getsockname()[1])


async def start_server(app: web.Application, host: str, port: int, ssl_context: Any) -> tuple[web.AppRunner, int]:
    """Serve `app` over TLS; returns the runner (clean it up) and the bound port (for port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = _DeadlineSite(runner, host, port, ssl_context=ssl_context, deadlines=app.get(DEADLINES))
    await site.start()
    return runner, site.bound_port
