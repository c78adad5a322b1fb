"""What the handlers share: the sidecars, the pod store, the watch hub, and the typed
`web.AppKey`s they live under."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from kod import errors
from kod.http import Stream
from kod.hub import Hub
from kod.wire import Pod, PodStatus

from interlink.routing import choose
from interlink.settings import InterlinkSettings
from interlink.sidecar import Sidecar
from interlink.store import PodStore


@dataclass
class Sidecars:
    """The configured sidecars, by name in config order."""

    settings: InterlinkSettings
    by_name: dict[str, Sidecar] = field(default_factory=dict)
    #: When the links were started (loop time), for the initial-sync grace period.
    started: float = 0.0
    #: Upstream streams open now (logs), closed at shutdown so their clients learn at once.
    streams: set[Stream] = field(default_factory=set)
    #: Exec, attach and port-forward WebSockets open now (their callers' side), closed at shutdown.
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    stopping: bool = False

    def for_new_pod(self, pod: Pod) -> Sidecar:
        """The sidecar the routing rules pick for a pod that no sidecar holds yet."""
        return self.by_name[choose(self.settings.sidecars, pod).name]


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


async def locate(app: web.Application, namespace: str, name: str, uid: str | None = None) -> Sidecar:
    """The sidecar that holds a pod. The store answers at once; for a pod it does not know (its
    sidecar has not synced yet, or the pod is brand new) every sidecar is asked.
    Raises NotFound when none has it, Unavailable when one that might have it cannot say."""
    sidecars = app[SIDECARS]
    known = app[STORE].locate(namespace, name, uid)
    if known is not None:
        return sidecars.by_name[known]
    candidates = list(sidecars.by_name.values())
    path = f"/v1/pods/{namespace}/{name}"
    results = await asyncio.gather(*(s.api.call("GET", path, PodStatus) for s in candidates), return_exceptions=True)
    unreachable = []
    for sidecar, result in zip(candidates, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, errors.NotFound):
                continue
            if isinstance(result, errors.Unavailable):
                unreachable.append(str(result))
                continue
            raise result
        _, status = result
        if uid is None or status.uid == uid:
            app[STORE].record(sidecar.name, status)
            return sidecar
    what = f"pod {namespace}/{name}" + (f" with uid {uid}" if uid else "")
    if unreachable:
        raise errors.Unavailable(f"{what} is on no reachable sidecar; {'; '.join(unreachable)}")
    raise errors.NotFound(f"{what} not found")
