"""What the handlers share: the sidecar clients, the pod store, the watch hub, and the typed
`web.AppKey`s they live under."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from kod import errors
from kod.wire import Pod, PodStatus

from interlink.hub import Hub
from interlink.routing import choose
from interlink.settings import InterlinkSettings
from interlink.sidecar import SidecarClient
from interlink.store import PodStore
from interlink.upstream import LinkHealth


@dataclass
class Sidecars:
    """The configured sidecars, in config order, with their clients and stream health."""

    settings: InterlinkSettings
    clients: dict[str, SidecarClient] = field(default_factory=dict)
    health: dict[str, LinkHealth] = field(default_factory=dict)
    #: When the links were started (loop time), for the initial-sync grace period.
    started: float = 0.0
    #: Upstream streams open now (logs), closed at shutdown so their clients learn at once.
    streams: set[aiohttp.ClientResponse] = field(default_factory=set)
    stopping: bool = False

    def for_new_pod(self, pod: Pod) -> SidecarClient:
        """The sidecar the routing rules pick for a pod that no sidecar holds yet."""
        return self.clients[choose(self.settings.sidecars, pod).name]


SETTINGS = web.AppKey("settings", InterlinkSettings)
SIDECARS = web.AppKey("sidecars", Sidecars)
STORE = web.AppKey("store", PodStore)
HUB = web.AppKey("hub", Hub)


async def initial_sync(app: web.Application) -> None:
    """Wait (up to `watch.initial_sync_seconds` after start) until every sidecar has sent its
    first SYNC, so that a freshly restarted interlink never reports a node without pods."""
    store = app[STORE]
    if store.all_synced.is_set():
        return
    loop = asyncio.get_running_loop()
    remaining = app[SIDECARS].started + app[SETTINGS].watch.initial_sync_seconds - loop.time()
    if remaining > 0:
        try:
            await asyncio.wait_for(store.all_synced.wait(), remaining)
        except TimeoutError:
            pass


async def locate(app: web.Application, namespace: str, name: str, uid: str | None = None) -> SidecarClient:
    """The sidecar that holds a pod. The store answers at once; for a pod it does not know (its
    sidecar has not synced yet, or the pod is brand new) every sidecar is asked.
    Raises NotFound when none has it, Unavailable when one that might have it cannot say."""
    sidecars = app[SIDECARS]
    known = app[STORE].locate(namespace, name, uid)
    if known is not None:
        return sidecars.clients[known]
    clients = list(sidecars.clients.values())
    path = f"/v1/pods/{namespace}/{name}"
    results = await asyncio.gather(*(c.call("GET", path, PodStatus) for c in clients), return_exceptions=True)
    unreachable = []
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, errors.NotFound):
                continue
            if isinstance(result, errors.Unavailable):
                unreachable.append(str(result))
                continue
            raise result
        _, status = result
        if uid is None or status.uid == uid:
            app[STORE].record(client.name, status)
            return client
    what = f"pod {namespace}/{name}" + (f" with uid {uid}" if uid else "")
    if unreachable:
        raise errors.Unavailable(f"{what} is on no reachable sidecar; {'; '.join(unreachable)}")
    raise errors.NotFound(f"{what} not found")
