"""A small, real sidecar: an aiohttp server on a free port that speaks the InterLink API from
`kod.wire` with pods in memory.

It is the one boundary interlink's unit tests fake (tests/unit/interlink_fake_sidecar.py; the
real Docker sidecar is used by the e2e tests), and the upstream of bench/interlink_overhead.py,
which measures interlink's own share of a call. Callers drive it from outside: change a pod's
status (`set_phase`), append log lines, break it (`fail`), stop and restart it on the same port,
and read what it received.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kod import errors
from kod.http import bearer_auth_middleware, error_middleware, json_model, parse_query, read_model, request_id_middleware
from kod.log import request_id_var
from kod.wire import (
    NDJSON,
    DeleteOptions,
    LogOptions,
    NodeInfo,
    PodCreateRequest,
    PodStatus,
    PodStatusList,
    Taint,
    WatchEvent,
)


@dataclass
class Failure:
    """How the fake answers while broken: a status with an ErrorBody, or a raw text body, or a
    delay longer than the caller's timeout."""

    status: int = 500
    code: str | None = None
    raw: bytes | None = None
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    request_id: str | None
    query: dict[str, str] = field(default_factory=dict)


class FakeSidecar:
    """Start with `await start()`, stop with `await stop()`; `url` stays the same across restarts."""

    def __init__(
        self,
        name: str,
        token: str | None = "sidecar-token",
        *,
        capacity: dict[str, str] | None = None,
        taints: list[Taint] | None = None,
        labels: dict[str, str] | None = None,
        heartbeat: float = 0.2,
    ) -> None:
        self.name = name
        self.token = token
        self.pods: dict[tuple[str, str], PodStatus] = {}
        self.logs: dict[tuple[str, str, str], list[bytes]] = {}
        self.seen: list[Seen] = []
        self.fail: Failure | None = None
        self.capacity = capacity or {"cpu": "2", "memory": "4Gi", "pods": "110"}
        self.taints = taints or []
        self.labels = labels or {}
        self.heartbeat = heartbeat
        self.open_log_streams = 0
        self.last_create_body: bytes | None = None
        self.log_bytes_sent = 0
        #: Watch misbehaviour: "silent" (no heartbeats), "garbage" (a line that is not JSON).
        self.watch_mode: str | None = None
        self.open_watches = 0
        self.watch_connects = 0
        self._watchers: set[asyncio.Queue[WatchEvent]] = set()
        self._log_waiters: set[asyncio.Event] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(
            middlewares=[request_id_middleware, error_middleware, bearer_auth_middleware(self.token), self._record]
        )
        app.router.add_get("/v1/ping", self._ping)
        app.router.add_post("/v1/pods", self._create)
        app.router.add_get("/v1/pods", self._list)
        app.router.add_get("/v1/pods/{namespace}/{name}", self._get)
        app.router.add_delete("/v1/pods/{namespace}/{name}", self._delete)
        app.router.add_get("/v1/pods/{namespace}/{name}/containers/{container}/logs", self._logs)
        app.router.add_get("/v1/watch", self._watch)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving (every open stream breaks), keeping the pods: a restart loses nothing."""
        if self._runner is not None:
            for queue in list(self._watchers):
                queue.put_nowait(WatchEvent(type="HEARTBEAT", pods=[]))  # marker: end the stream
            await self._runner.cleanup()
            self._runner = None

    # --- driven by the tests ---

    def emit(self, event: WatchEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)

    def add_pod(self, namespace: str, name: str, uid: str, phase: str = "Running") -> PodStatus:
        pod = PodStatus(namespace=namespace, name=name, uid=uid, phase=phase, version=1)  # type: ignore[arg-type]
        self.pods[(namespace, name)] = pod
        self.emit(WatchEvent(type="STATUS", pod=pod))
        return pod

    def set_phase(self, namespace: str, name: str, phase: str, **more: Any) -> PodStatus:
        old = self.pods[(namespace, name)]
        pod = old.model_copy(update={"phase": phase, "version": old.version + 1, **more})
        self.pods[(namespace, name)] = pod
        self.emit(WatchEvent(type="STATUS", pod=pod))
        return pod

    def forget(self, namespace: str, name: str) -> None:
        """The pod vanishes without an event (as if lost while the stream was down)."""
        del self.pods[(namespace, name)]

    def append_log(self, namespace: str, name: str, container: str, data: bytes) -> None:
        self.logs.setdefault((namespace, name, container), []).append(data)
        for waiter in list(self._log_waiters):
            waiter.set()

    # --- the API ---

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, request_id_var.get(), dict(request.query)))
        if self.fail is not None and request.path != "/v1/watch":
            fail = self.fail
            if fail.delay:
                await asyncio.sleep(fail.delay)
            if fail.raw is not None:
                return web.Response(status=fail.status, body=fail.raw, content_type="text/plain")
            raise errors.from_status(fail.status, f"{self.name} is broken on purpose", fail.code)
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.Response:
        return json_model(NodeInfo(capacity=self.capacity, allocatable=self.capacity, taints=self.taints,
                                   labels=self.labels, version=f"fake/{self.name}"))

    async def _create(self, request: web.Request) -> web.Response:
        req = await read_model(request, PodCreateRequest)
        self.last_create_body = await request.read()
        meta = req.pod.metadata
        known = self.pods.get((meta.namespace, meta.name))
        if known is not None:
            if known.uid != meta.uid:
                raise errors.Conflict(f"pod {meta.namespace}/{meta.name} exists with another uid")
            return json_model(known, status=200)
        if any(c.securityContext and c.securityContext.privileged for c in req.pod.spec.containers):
            raise errors.Forbidden("privileged containers are not allowed on this desktop")
        pod = self.add_pod(meta.namespace, meta.name, meta.uid, phase="Pending")
        return json_model(pod, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        return json_model(PodStatusList(items=list(self.pods.values())))

    def _pod(self, request: web.Request) -> PodStatus:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.pods:
            raise errors.NotFound(f"pod {key[0]}/{key[1]} not found")
        return self.pods[key]

    async def _get(self, request: web.Request) -> web.Response:
        return json_model(self._pod(request))

    async def _delete(self, request: web.Request) -> web.Response:
        opts = parse_query(request, DeleteOptions)
        pod = self._pod(request)
        if opts.uid is not None and opts.uid != pod.uid:
            raise errors.NotFound(f"pod {pod.namespace}/{pod.name} with uid {opts.uid} not found")
        del self.pods[(pod.namespace, pod.name)]
        final = pod.model_copy(update={"phase": "Succeeded", "version": pod.version + 1})
        self.emit(WatchEvent(type="DELETED", pod=final))
        return json_model(final)

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        opts = parse_query(request, LogOptions)
        pod = self._pod(request)
        key = (pod.namespace, pod.name, request.match_info["container"])
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        self.open_log_streams += 1
        sent = 0
        waiter = asyncio.Event()
        self._log_waiters.add(waiter)
        try:
            lines = self.logs.get(key, [])
            if opts.tailLines is not None:
                sent = max(0, len(lines) - opts.tailLines)
            while True:
                lines = self.logs.get(key, [])
                while sent < len(lines):
                    await response.write(lines[sent])
                    self.log_bytes_sent += len(lines[sent])
                    sent += 1
                if not opts.follow or (pod.namespace, pod.name) not in self.pods:
                    break
                waiter.clear()
                await waiter.wait()
        finally:
            self._log_waiters.discard(waiter)
            self.open_log_streams -= 1
        return response

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self._watchers.add(queue)
        self.watch_connects += 1
        self.open_watches += 1
        mode = self.watch_mode  # this stream keeps the behaviour it started with
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        try:
            await response.prepare(request)
            sync = WatchEvent(type="SYNC", pods=list(self.pods.values()))
            await response.write(sync.model_dump_json(exclude_none=True).encode() + b"\n")
            if mode == "garbage":
                await response.write(b"this is not json\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.heartbeat)
                except TimeoutError:
                    if mode == "silent":
                        continue
                    event = WatchEvent(type="HEARTBEAT")
                if event.type == "HEARTBEAT" and event.pods is not None:
                    break
                await response.write(event.model_dump_json(exclude_none=True).encode() + b"\n")
        finally:
            self._watchers.discard(queue)
            self.open_watches -= 1
        return response


def pod_body(name: str, uid: str, *, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A PodCreateRequest body as the virtual kubelet sends it."""
    labels = spec.pop("labels", {})
    annotations = spec.pop("annotations", {})
    containers = spec.pop("containers", [{"name": "main", "image": "busybox"}])
    return {
        "pod": {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels,
                         "annotations": annotations},
            "spec": {"containers": containers, **spec},
        },
        "containers": [{"name": c["name"], "env": []} for c in containers],
    }


async def wait_for(condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until `condition()` is true (checked every 10 ms), or fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
