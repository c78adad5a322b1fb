"""Small REAL servers that stand in for one boundary in vk_bridge's unit tests.

- `FakeInterLink`: the InterLink REST API (`kod.wire`) in memory, with bearer auth, idempotent
  create by uid, pushed status on /v1/watch (SYNC, STATUS, DELETED, HEARTBEAT: served by the same
  `kod.hub` and `kod.watch_serve` as interlink's), streamed logs and a policy that refuses
  privileged pods. Tests change pod states with `set_status`/`finish`.
- `FakeKubeApi`: the few Kubernetes API calls the pod controller makes (pods/status PATCH, pod
  DELETE with a uid precondition, Secrets/ConfigMaps, Events), recording what it received.

Both are aiohttp applications served on port 0 by the tests' `aiohttp_server` fixture.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kod import errors, streams, wire
from kod.http import bearer_auth_middleware, error_middleware, json_model, read_model, request_id_middleware
from kod.hub import Hub
from kod.watch_serve import serve_watch

TOKEN = "fake-interlink-token"


class FakeInterLink:
    """InterLink in memory. `creates` counts POSTs that started something (not idempotent ones)."""

    def __init__(self, *, heartbeat: float = 10.0) -> None:
        self.pods: dict[str, wire.PodStatus] = {}
        self.requests: dict[str, wire.PodCreateRequest] = {}
        self.creates = 0
        self.deletes: list[tuple[str, int | None]] = []
        self.request_ids: list[str] = []
        self.hub = Hub(queue_size=1024)
        self.heartbeat = heartbeat
        self.logs: dict[str, list[str]] = {}
        #: The next this-many deletes fail with 400 (an engine that refuses, as after a crash).
        self.failing_deletes = 0
        self.app = self._app()

    # -- test controls --------------------------------------------------------------------------

    def push(self, event: wire.WatchEvent) -> None:
        self.hub.publish(event)

    def set_status(self, uid: str, *, push: bool = True, **changes: Any) -> wire.PodStatus:
        """Change a pod's status; `push=False`: tell no watch stream (a change made while the
        streams are down, which only the next SYNC shows)."""
        old = self.pods[uid]
        new = old.model_copy(update={**changes, "version": old.version + 1})
        self.pods[uid] = new
        if push:
            self.push(wire.WatchEvent(type="STATUS", pod=new))
        return new

    def finish(self, uid: str, exit_code: int, *, push: bool = True) -> wire.PodStatus:
        """Every container of the pod exits with `exit_code`."""
        pod = self.pods[uid]
        now = datetime.now(UTC)
        statuses = [
            c.model_copy(update={
                "ready": False,
                "state": wire.ContainerState(terminated=wire.ContainerStateTerminated(
                    exitCode=exit_code, reason="Completed" if exit_code == 0 else "Error", finishedAt=now,
                    startedAt=now, containerID=c.containerID,
                )),
            })
            for c in pod.containerStatuses
        ]
        return self.set_status(uid, push=push, phase="Succeeded" if exit_code == 0 else "Failed", containerStatuses=statuses)

    def break_watches(self) -> None:
        """End every open watch stream (as a restart of InterLink would)."""
        self.hub.close()

    def adopt(self, request: wire.PodCreateRequest) -> wire.PodStatus:
        """Put a pod in as if it had been created before (no create counted)."""
        status = self._running(request)
        self.pods[status.uid] = status
        self.requests[status.uid] = request
        return status

    # -- the API ----------------------------------------------------------------------------------

    def _running(self, req: wire.PodCreateRequest) -> wire.PodStatus:
        meta = req.pod.metadata
        now = datetime.now(UTC)
        return wire.PodStatus(
            namespace=meta.namespace, name=meta.name, uid=meta.uid, phase="Running", podIP="172.17.0.42", startTime=now,
            containerStatuses=[
                wire.ContainerStatus(
                    name=c.name, ready=True, started=True, image=c.image, imageID="sha256:abc",
                    containerID=f"docker://{meta.uid[:8]}{i}",
                    state=wire.ContainerState(running=wire.ContainerStateRunning(startedAt=now)),
                )
                for i, c in enumerate(req.pod.spec.containers)
            ],
            version=1,
        )

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[request_id_middleware, error_middleware, bearer_auth_middleware(TOKEN)])
        p = wire.API_PREFIX
        app.router.add_get(f"{p}/ping", self.ping)
        app.router.add_post(f"{p}/pods", self.create)
        app.router.add_get(f"{p}/pods", self.list)
        app.router.add_get(f"{p}/pods/{{namespace}}/{{name}}", self.get)
        app.router.add_delete(f"{p}/pods/{{namespace}}/{{name}}", self.delete)
        app.router.add_get(f"{p}/pods/{{namespace}}/{{name}}/containers/{{container}}/logs", self.container_logs)
        app.router.add_get(f"{p}/watch", self.watch)
        app.router.add_get(f"{p}/pods/{{namespace}}/{{name}}/containers/{{container}}/exec", self.exec_stream)
        app.router.add_get(f"{p}/pods/{{namespace}}/{{name}}/portforward", self.port_forward_stream)
        return app

    async def exec_stream(self, request: web.Request) -> web.StreamResponse:
        """A pretend process on a `kod.streams` socket: `echo ARGS` prints them, `cat` copies
        stdin until its end, `exit N` exits N; `not-running` finds the container stopped."""
        try:
            options = streams.parse_exec_query(request.query)
            self._find(request.match_info["namespace"], request.match_info["name"])
            if options.command[:1] == ["not-running"]:
                raise errors.InvalidInput(f'container "{request.match_info["container"]}" is not running')
        except errors.KodError as exc:
            return streams.refusal(exc)
        ws = await streams.accept(request)
        channels = streams.Channels(ws)
        argv, code = options.command, 0
        if argv[0] == "echo":
            await channels.send(streams.STDOUT, (" ".join(argv[1:]) + "\n").encode())
        elif argv[0] == "cat":
            while (message := await channels.receive()) is not None:
                channel, payload = message
                if channel == streams.STDIN:
                    await channels.send(streams.STDOUT, payload)
                elif channel == streams.RESIZE:
                    await channels.send(streams.STDERR, b"resize " + payload + b"\n")
                elif channel == streams.CLOSE:
                    break
        elif argv[0] == "exit":
            code = int(argv[1])
        await channels.send_status(wire.StreamStatus(exitCode=code))
        await channels.close()
        return ws

    async def port_forward_stream(self, request: web.Request) -> web.StreamResponse:
        """An upper-casing echo on every port but 81 (refused)."""
        try:
            options = streams.parse_port_query(request.query)
            if options.port == 81:
                raise errors.InvalidInput("failed to connect to localhost:81 inside the pod's network namespace: connection refused")
        except errors.KodError as exc:
            return streams.refusal(exc)
        ws = await streams.accept(request)
        channels = streams.Channels(ws)
        while (message := await channels.receive()) is not None:
            channel, payload = message
            if channel == streams.DATA:
                await channels.send(streams.DATA, payload.upper())
            elif channel == streams.CLOSE:
                await channels.end(streams.DATA)
                break
        await channels.close()
        return ws

    def _find(self, namespace: str, name: str) -> wire.PodStatus:
        for pod in self.pods.values():
            if pod.namespace == namespace and pod.name == name:
                return pod
        raise errors.NotFound(f"pod {namespace}/{name} not found")

    async def ping(self, request: web.Request) -> web.Response:
        return json_model(wire.NodeInfo(capacity={"cpu": "8", "memory": "16Gi", "pods": "300"}, version="fake-1"))

    async def create(self, request: web.Request) -> web.Response:
        self.request_ids.append(request.headers.get(wire.REQUEST_ID_HEADER, ""))
        req = await read_model(request, wire.PodCreateRequest)
        uid = req.pod.metadata.uid
        if uid in self.pods:
            return json_model(self.pods[uid], status=200)
        for c in req.pod.spec.containers:
            if c.securityContext and c.securityContext.privileged:
                raise errors.Forbidden(f"container {c.name!r} asks to be privileged; the desktop policy forbids it")
        status = self._running(req)
        self.pods[uid] = status
        self.requests[uid] = req
        self.creates += 1
        self.push(wire.WatchEvent(type="STATUS", pod=status))
        return json_model(status, status=201)

    async def list(self, request: web.Request) -> web.Response:
        return json_model(wire.PodStatusList(items=list(self.pods.values())))

    async def get(self, request: web.Request) -> web.Response:
        return json_model(self._find(request.match_info["namespace"], request.match_info["name"]))

    async def delete(self, request: web.Request) -> web.Response:
        opts = wire.DeleteOptions.model_validate(dict(request.query))
        if self.failing_deletes > 0:
            self.failing_deletes -= 1
            raise errors.InvalidInput("the Docker engine refused deleting the pod")
        pod = self._find(request.match_info["namespace"], request.match_info["name"])
        if opts.uid and opts.uid != pod.uid:
            raise errors.NotFound("no pod with that uid")
        self.pods.pop(pod.uid)
        self.deletes.append((pod.uid, opts.gracePeriodSeconds))
        final = pod.model_copy(update={"phase": "Succeeded", "version": pod.version + 1})
        self.push(wire.WatchEvent(type="DELETED", pod=final))
        return json_model(final)

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        pod = self._find(request.match_info["namespace"], request.match_info["name"])
        container = request.match_info["container"]
        if container not in {c.name for c in pod.containerStatuses}:
            raise errors.NotFound(f"container {container} not found")
        opts = wire.LogOptions.model_validate(dict(request.query))
        lines = self.logs.get(f"{pod.uid}/{container}", [f"hello from {container}"])
        if opts.tailLines is not None:
            lines = lines[-opts.tailLines:] if opts.tailLines else []
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for line in lines:
            await resp.write(line.encode() + b"\n")
        if opts.follow:
            for i in range(3):
                await asyncio.sleep(0.05)
                await resp.write(f"follow {i}\n".encode())
        await resp.write_eof()
        return resp

    async def watch(self, request: web.Request) -> web.StreamResponse:
        return await serve_watch(request, self.hub, snapshot=lambda: list(self.pods.values()), heartbeat_seconds=self.heartbeat)


class FakeKubeApi:
    """The pod controller's side of the Kubernetes API, recording every call."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.deletes: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        #: The next this-many status PATCHes fail with 500 (an API server under load).
        self.failing_status_patches = 0
        self._rv = 100
        self.app = self._app()

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        pod.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}/status", self.patch_status)
        app.router.add_delete("/api/v1/namespaces/{ns}/pods/{name}", self.delete_pod)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self.get_secret)
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self.get_config_map)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self.post_event)
        app.router.add_patch("/api/v1/namespaces/{ns}/events/{name}", self.patch_event)
        return app

    @staticmethod
    def _status(code: int, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "status": "Failure", "message": message, "code": code}, status=code)

    async def patch_status(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        self.patches.append((request.path, body))
        if self.failing_status_patches > 0:
            self.failing_status_patches -= 1
            return self._status(500, "etcdserver: request timed out")
        pod = self.pods.get(key)
        if pod is None:
            return self._status(404, "pods not found")
        if body.get("metadata", {}).get("uid") not in (None, pod["metadata"]["uid"]):
            return self._status(422, "metadata.uid: field is immutable")
        pod["status"] = {k: v for k, v in body.get("status", {}).items() if v is not None}
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        return web.json_response(pod)

    async def delete_pod(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        key = (request.match_info["ns"], request.match_info["name"])
        self.deletes.append((request.path, body))
        pod = self.pods.get(key)
        if pod is None:
            return self._status(404, "pods not found")
        want = (body.get("preconditions") or {}).get("uid")
        if want and want != pod["metadata"]["uid"]:
            return self._status(409, "Precondition failed: UID in precondition")
        del self.pods[key]
        return web.json_response(pod)

    async def get_secret(self, request: web.Request) -> web.Response:
        obj = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        return web.json_response(obj) if obj else self._status(404, "secret not found")

    async def get_config_map(self, request: web.Request) -> web.Response:
        obj = self.config_maps.get((request.match_info["ns"], request.match_info["name"]))
        return web.json_response(obj) if obj else self._status(404, "configmap not found")

    async def post_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        if any(e["metadata"]["name"] == body["metadata"]["name"] for e in self.events):
            return self._status(409, f"events \"{body['metadata']['name']}\" already exists")
        self.events.append(body)
        return web.json_response(body, status=201)

    async def patch_event(self, request: web.Request) -> web.Response:
        patch = await request.json()
        for event in self.events:
            if event["metadata"]["name"] == request.match_info["name"]:
                event.update(patch)
                return web.json_response(event)
        return self._status(404, "events not found")
