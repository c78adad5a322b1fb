"""The provider: where vk_bridge runs pods. The real one is InterLink over REST.

The interface is split by its caller, as virtual-kubelet's is:

    PodLifecycle     create, delete, get status      the pod workers (pods.py), the kubelet API
    StatusNotifier   watch: pushed status changes     the pod controller's remote watch (pods.py)
    NodeProvider     ping: health and capacity        the node heartbeat (node.py)
    ContainerLogs    logs (an optional extra)         the kubelet API (kubelet_api.py)
    ContainerStreams exec, attach, port-forward       the kubelet API (an optional extra too)
    ResourceUsage    stats: CPU time and memory        the kubelet API's /stats/summary and
                                                      /metrics/resource (optional: `kubectl top`)
    VolumeUpdates    update_volumes                    the live volumes (live_volumes.py)

Each caller is typed against the narrow protocol it uses (`PodSync` for the pod controller,
`LogsSource` for the kubelet API); `Provider` is all of them, what `main` wires in.
Every method's errors are `kod.errors` exceptions (`Unavailable` is worth retrying, the others
are not). Objects a provider returns or delivers are read-only: callers must not modify them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NoReturn, Protocol, TypeVar, runtime_checkable

from kod import errors, streams, wire
from kod.http import ApiClient
from kod.log import get_logger
from kod.watch_follow import LinkHealth, follow_watch

log = get_logger(__name__)
T = TypeVar("T")

#: A stream that stays silent this long (three missed heartbeats) is dead: reconnect.
WATCH_INACTIVITY_SECONDS = 3 * wire.WATCH_HEARTBEAT_SECONDS
#: Grace period a delete allows for when the caller gives none (Kubernetes' default).
DEFAULT_GRACE_SECONDS = 30


@runtime_checkable
class PodLifecycle(Protocol):
    """Runs and stops pods (virtual-kubelet's PodLifecycleHandler)."""

    async def create_pod(self, request: wire.PodCreateRequest) -> wire.PodStatus:
        """Start the pod. Idempotent by uid: creating a uid that already exists returns its
        current status and starts nothing, so it may be called again after any failure. A pod
        the runtime's policy refuses raises `Forbidden` (nothing is started then)."""
        ...

    async def delete_pod(
        self, namespace: str, name: str, uid: str, *, grace_period_seconds: int | None
    ) -> wire.PodStatus | None:
        """Stop the pod's containers (SIGTERM, then SIGKILL after the grace period; None: the
        pod's own) and remove them; returns the final status, or None when the pod was not
        there. Delete may be called more than once for the same pod, also while a delete of it
        runs; only the given uid is touched (a new pod of the same name is left alone)."""
        ...

    async def get_pod_status(self, namespace: str, name: str) -> wire.PodStatus:
        """The pod's current status; `NotFound` when the runtime does not know it."""
        ...


@runtime_checkable
class StatusNotifier(Protocol):
    """Pushes status changes (virtual-kubelet's PodNotifier): nothing polls per pod."""

    async def watch(self, notify: Callable[[wire.WatchEvent], None], *, connected: asyncio.Event | None = None) -> NoReturn:
        """Deliver pushed status changes until cancelled, reconnecting forever. Every (re)connection
        starts with a SYNC event carrying every pod, so nothing missed while disconnected is lost
        for good; then STATUS, DELETED and HEARTBEAT events in order. `notify` must not block (it
        may only update memory and enqueue) and must not raise. `connected` is set while a stream
        is open (from its SYNC on) and cleared when it breaks."""
        ...


@runtime_checkable
class NodeProvider(Protocol):
    """What the node heartbeat asks (virtual-kubelet's NodeProvider)."""

    #: Where the runtime is (a URL), for the node's condition messages.
    url: str

    async def ping(self) -> wire.NodeInfo:
        """Health and capacity of the runtime, answered quickly (it is called every few seconds
        and must not retry for long); raises `Unavailable` when the runtime cannot answer."""
        ...


@runtime_checkable
class ContainerLogs(Protocol):
    """An optional extra: container logs, for `kubectl logs`."""

    def logs(self, namespace: str, name: str, container: str, options: wire.LogOptions) -> AsyncIterator[bytes]:
        """A container's log as chunks of bytes; follows (until the consumer stops or the container
        stops) when `options.follow`. Raises `NotFound` before the first chunk for an unknown pod
        or container, and `Unavailable` when the stream breaks midway. (An async generator, not a
        coroutine.)"""
        ...


@runtime_checkable
class ContainerStreams(Protocol):
    """An optional extra (virtual-kubelet keeps exec optional too): the streams behind `kubectl
    exec`, `attach`, `cp` and `port-forward`, each a `kod.streams` channel socket that the
    caller owns (and closes). Every error comes before the socket is returned: `NotFound` (no
    such pod or container), `InvalidInput` (the container is not running, bad options),
    `Unavailable`. A provider without them makes the kubelet API answer 501."""

    async def exec(self, namespace: str, name: str, container: str, options: wire.ExecOptions) -> streams.Channels:
        """Run `options.command` (an argv; never given to a shell) in a running container. The
        socket ends with a STATUS message carrying the exit code."""
        ...

    async def attach(self, namespace: str, name: str, container: str, options: wire.ExecOptions) -> streams.Channels:
        """Attach to the container's main process (its stdin when the container keeps one open);
        ends with a STATUS message (no exit code) when the process ends."""
        ...

    async def port_forward(self, namespace: str, name: str, port: int) -> streams.Channels:
        """One TCP connection to `port` on the pod's own 127.0.0.1 (inside its network
        namespace), as DATA messages both ways; CLOSE [DATA] is a side's EOF."""
        ...


@runtime_checkable
class ResourceUsage(Protocol):
    """An optional extra (virtual-kubelet's stats are too): what `kubectl top` shows. A provider
    without it makes /stats/summary and /metrics/resource answer 501."""

    async def stats(self) -> wire.UsageReport:
        """The machine's and every running container's figures, read now (cumulative CPU time,
        memory gauges; no rates). Quick (it is called on every scrape, every 15 s or so); what
        could not be read is named in the report's `errors`, not raised; raises `Unavailable`
        only when nothing could be asked."""
        ...


@runtime_checkable
class VolumeUpdates(Protocol):
    """New contents for a running pod's Secret, ConfigMap, projected and downwardAPI volumes."""

    async def update_volumes(self, namespace: str, name: str, update: wire.VolumeUpdate) -> wire.VolumeUpdateResult:
        """Swap each named volume's files for the given ones, atomically (a reader sees the old
        files or the new ones). `NotFound`: no such pod (uid); `InvalidInput`: not a content
        volume, or the runtime cannot update volumes (nothing will change by retrying);
        `Unavailable`: the pod's volumes are not set up now."""
        ...


@runtime_checkable
class PodSync(PodLifecycle, StatusNotifier, Protocol):
    """What the pod controller uses: the lifecycle, and the pushed status that drives it."""


@runtime_checkable
class LogsSource(PodLifecycle, ContainerLogs, Protocol):
    """What the kubelet API uses: a pod's status (its containers) and their logs."""


@runtime_checkable
class Provider(PodLifecycle, StatusNotifier, NodeProvider, ContainerLogs, Protocol):
    """Everything, as `main` wires it in; `close()` releases its connections."""

    async def close(self) -> None:
        """Release connections; nothing may be called afterwards."""
        ...


class InterLinkProvider:
    """`Provider` on the InterLink REST API (`kod.wire`) through `kod.http.ApiClient`; calls are
    retried with `backoff` while InterLink is `Unavailable`."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        backoff: Sequence[float] = (0.1, 0.5, 1.0, 2.0),
        watch_idle_seconds: float = WATCH_INACTIVITY_SECONDS,
    ) -> None:
        self.url = url
        self._api = ApiClient(
            url, token, timeout=timeout, name="InterLink",
            unreachable_hint="check that kod-interlink runs and that interlink.url in vk_bridge's settings points to it",
        )
        self._timeout = timeout
        self._backoff = tuple(backoff)
        self._watch_idle_seconds = watch_idle_seconds

    async def close(self) -> None:
        await self._api.close()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        attempts = len(self._backoff) + 1
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except errors.Unavailable as exc:
                if attempt == attempts:
                    raise
                delay = self._backoff[attempt - 1]
                log.warning("InterLink call failed, retrying", call=what, attempt=f"{attempt}/{attempts}", delay=delay, error=str(exc))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def create_pod(self, request: wire.PodCreateRequest) -> wire.PodStatus:
        result: wire.PodStatus = await self._retrying(
            "create", lambda: self._api.request("POST", f"{wire.API_PREFIX}/pods", body=request, model=wire.PodStatus)
        )
        return result

    async def delete_pod(
        self, namespace: str, name: str, uid: str, *, grace_period_seconds: int | None
    ) -> wire.PodStatus | None:
        params = wire.DeleteOptions(uid=uid, gracePeriodSeconds=grace_period_seconds).model_dump(exclude_none=True)
        # The call lasts as long as the grace period: give it that much (at least Kubernetes'
        # default, which a pod's own period may be) on top of the usual timeout.
        timeout = self._timeout + max(grace_period_seconds or 0, DEFAULT_GRACE_SECONDS)
        try:
            result: wire.PodStatus = await self._retrying(
                "delete",
                lambda: self._api.request(
                    "DELETE", f"{wire.API_PREFIX}/pods/{namespace}/{name}", params=params, model=wire.PodStatus, timeout=timeout
                ),
            )
        except errors.NotFound:
            return None
        return result

    async def update_volumes(self, namespace: str, name: str, update: wire.VolumeUpdate) -> wire.VolumeUpdateResult:
        # Not retried here: the live volumes send the latest contents again on their next round.
        result: wire.VolumeUpdateResult = await self._api.request(
            "PUT", f"{wire.API_PREFIX}/pods/{namespace}/{name}/volumes", body=update, model=wire.VolumeUpdateResult
        )
        return result

    async def get_pod_status(self, namespace: str, name: str) -> wire.PodStatus:
        result: wire.PodStatus = await self._retrying(
            "status", lambda: self._api.request("GET", f"{wire.API_PREFIX}/pods/{namespace}/{name}", model=wire.PodStatus)
        )
        return result

    async def logs(self, namespace: str, name: str, container: str, options: wire.LogOptions) -> AsyncIterator[bytes]:
        params = options.model_dump(exclude_none=True, mode="json")
        params = {k: v for k, v in params.items() if v is not False}
        async for chunk in self._api.stream(
            "GET", f"{wire.API_PREFIX}/pods/{namespace}/{name}/containers/{container}/logs", params=params
        ):
            yield chunk

    async def exec(self, namespace: str, name: str, container: str, options: wire.ExecOptions) -> streams.Channels:
        return await self._open_stream(
            "exec", f"{wire.API_PREFIX}/pods/{namespace}/{name}/containers/{container}/exec", streams.exec_query(options)
        )

    async def attach(self, namespace: str, name: str, container: str, options: wire.ExecOptions) -> streams.Channels:
        return await self._open_stream(
            "attach", f"{wire.API_PREFIX}/pods/{namespace}/{name}/containers/{container}/attach", streams.exec_query(options)
        )

    async def port_forward(self, namespace: str, name: str, port: int) -> streams.Channels:
        return await self._open_stream(
            "port-forward", f"{wire.API_PREFIX}/pods/{namespace}/{name}/portforward", [("port", str(port))]
        )

    async def _open_stream(self, what: str, path: str, query: list[tuple[str, str]]) -> streams.Channels:
        # Opening is retried like any call (nothing has flowed yet); the stream itself is not.
        ws = await self._retrying(what, lambda: self._api.websocket(path, params=query))
        return streams.Channels(ws)

    async def ping(self) -> wire.NodeInfo:
        result: wire.NodeInfo = await self._api.request("GET", f"{wire.API_PREFIX}/ping", model=wire.NodeInfo, timeout=10.0)
        return result

    async def watch(self, notify: Callable[[wire.WatchEvent], None], *, connected: asyncio.Event | None = None) -> NoReturn:
        await follow_watch(
            self._api,
            notify,
            idle_seconds=self._watch_idle_seconds,
            backoff=self._backoff,
            health=LinkHealth(event=connected),
            logger=log.bind(peer="InterLink", url=self.url),
        )

    async def stats(self) -> wire.UsageReport:
        # Not retried: a scrape that fails is followed by the next one in a few seconds.
        result: wire.UsageReport = await self._api.request(
            "GET", f"{wire.API_PREFIX}/stats", model=wire.UsageReport, timeout=10.0
        )
        return result
