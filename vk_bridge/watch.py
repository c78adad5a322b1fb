"""List-then-watch streams of Kubernetes objects, as small async generators.

`list_and_watch` has one job: keep a consumer's view of a collection current, forever. It lists
(one `SYNC` event with every object), then watches from the list's resourceVersion. When a watch
ends normally (the server's timeout) it watches again from the last resourceVersion it saw, with
no new list, so an idle stream costs one request per `timeout_seconds`. When the connection
breaks or stays silent too long it backs off and resumes from the same resourceVersion; on
410 Gone it lists again. Bookmarks keep the resourceVersion fresh without reaching the consumer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kod import errors
from kod.log import get_logger
from vk_bridge.kube import Expired, KubeClient

log = get_logger(__name__)

EventType = Literal["SYNC", "ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class WatchEvent:
    """`SYNC` carries the complete list (`objects`); the others one object (`object`)."""

    type: EventType
    object: Mapping[str, Any] | None = None
    objects: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


async def list_and_watch(
    kube: KubeClient,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout_seconds: int = 300,
    backoff: Sequence[float] = (0.5, 1.0, 2.0, 5.0),
) -> AsyncIterator[WatchEvent]:
    """Yield a SYNC, then changes, forever (until the consumer stops iterating or is cancelled)."""
    base = dict(params or {})
    resource_version: str | None = None
    failures = 0
    while True:
        try:
            if resource_version is None:
                listing = await kube.get(path, params=base)
                resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                yield WatchEvent("SYNC", objects=tuple(listing.get("items") or ()))
            # Spread re-watches of many clients over time, like client-go's reflector.
            timeout = int(timeout_seconds * (1 + random.random()))
            async for event in kube.watch_stream(
                path,
                params={**base, "resourceVersion": resource_version, "allowWatchBookmarks": True, "timeoutSeconds": timeout},
                inactivity_timeout=timeout + 30,
            ):
                failures = 0
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    resource_version = str(rv)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield WatchEvent(event["type"], object=obj)
        except Expired:
            log.info("watch expired, listing again", path=path)
            resource_version = None
        except errors.KodError as exc:
            # A broken connection is routine; anything else (401/403: credentials or RBAC) is
            # worth an error line, and is retried too: it may be fixed without restarting us.
            delay = backoff[min(failures, len(backoff) - 1)]
            failures += 1
            level = log.warning if errors.is_retryable(exc) else log.error
            level("watch interrupted, resuming", path=path, attempt=failures, delay=delay, error=str(exc))
            await asyncio.sleep(delay)


class ObjectCache:
    """A read-only view of a collection kept current by `list_and_watch` (e.g. the Services the
    kubelet needs for service-link variables). `ready` is set after the first SYNC."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.ready = asyncio.Event()

    def apply(self, event: WatchEvent) -> None:
        """Fold one event into the cache."""
        if event.type == "SYNC":
            self.objects = {_key(o): o for o in event.objects}
            self.ready.set()
        elif event.object is not None:
            if event.type == "DELETED":
                self.objects.pop(_key(event.object), None)
            else:
                self.objects[_key(event.object)] = event.object

    def in_namespaces(self, *namespaces: str) -> list[Mapping[str, Any]]:
        return [o for (ns, _), o in self.objects.items() if ns in namespaces]

    async def run(self, kube: KubeClient, path: str, **kwargs: Any) -> None:
        """Keep the cache current until cancelled."""
        async for event in list_and_watch(kube, path, **kwargs):
            self.apply(event)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")
