"""List-then-watch streams of Kubernetes objects, as small async generators with one job each.

- `list_and_watch` keeps a consumer's view of a collection current, forever. It lists (one
  `SYNC` event with every object), then watches from the list's resourceVersion. When a watch
  ends normally (the server's `timeoutSeconds`) it watches again from the last resourceVersion
  it saw, with no new list, so an idle stream costs one request per `timeout_seconds`. When the
  connection breaks or stays silent past the inactivity timeout it backs off and resumes from
  the same resourceVersion; only on 410 Gone (`Expired`) does it list again. Bookmarks keep the
  resourceVersion fresh without reaching the consumer.
- `watch_changes` is the same stream as ADDED/MODIFIED/DELETED events only: a SYNC becomes
  ADDED for new objects, MODIFIED for changed ones and DELETED for the ones that vanished since
  the previous list, so a consumer that only follows changes never misses a final state.
- `ObjectCache` folds the stream into a read-only dict.

    async for event in list_and_watch(kube, "/api/v1/pods", params={"fieldSelector": "spec.nodeName=n"}):
        if event.type == "SYNC": ...              # event.objects: the complete list
        else: ...                                 # event.object: one object

Errors: unavailability (connection, 5xx, 429, inactivity) is always retried with `backoff`.
Refusals a retry cannot fix by itself (401, 403, 400, ...) are retried too, logged as errors, by
default (a daemon outlives an RBAC fix); `retry_refusals=False` raises them instead (a CLI says
why at once).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kod import errors
from kod.kube import KubeClient
from kod.kube_errors import Expired
from kod.log import get_logger

log = get_logger(__name__)

EventType = Literal["SYNC", "ADDED", "MODIFIED", "DELETED"]
#: Delays before each attempt to resume a broken watch; the last one repeats.
WATCH_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
#: Seconds of silence past the server's own timeout before a stream counts as broken.
INACTIVITY_MARGIN = 30.0
#: A watch that ends sooner than this without a single event counts as broken (backoff applies).
SHORT_WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class WatchEvent:
    """`SYNC` carries the complete list (`objects`); the others one object (`object`).
    Objects are the API's JSON, read-only."""

    type: EventType
    object: Mapping[str, Any] | None = None
    objects: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


async def list_and_watch(
    kube: KubeClient,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout_seconds: int = 300,
    inactivity_seconds: float | None = None,
    backoff: Sequence[float] = WATCH_BACKOFF,
    retry_refusals: bool = True,
) -> AsyncIterator[WatchEvent]:
    """Yield a SYNC, then changes, forever (until the consumer stops iterating or is cancelled).
    `params`: the list's selectors. `timeout_seconds`: the server-side timeout of one watch
    request, spread up to twice that (like client-go's reflector, so many clients do not re-watch
    at once). `inactivity_seconds`: silence that counts as a broken stream (default: the watch's
    timeout plus `INACTIVITY_MARGIN`)."""
    loop = asyncio.get_running_loop()
    base = dict(params or {})
    resource_version: str | None = None
    failures = 0
    while True:
        try:
            if resource_version is None:
                listing = await kube.get(path, params=base) or {}
                resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                failures = 0
                yield WatchEvent("SYNC", objects=tuple(listing.get("items") or ()))
            timeout = int(timeout_seconds * (1 + random.random()))
            started, events = loop.time(), 0
            async for event in kube.watch_stream(
                path,
                params={**base, "resourceVersion": resource_version, "allowWatchBookmarks": True, "timeoutSeconds": timeout},
                inactivity_timeout=inactivity_seconds or timeout + INACTIVITY_MARGIN,
            ):
                failures, events = 0, events + 1
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    resource_version = str(rv)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield WatchEvent(event["type"], object=obj)
            if not events and loop.time() - started < SHORT_WATCH_SECONDS:
                # Ended at once with nothing said (a proxy that closes streams): not a busy loop.
                raise errors.Unavailable(f"WATCH {path}: the stream ended at once, with no event")
        except Expired:
            log.info("watch expired, listing again", path=path)
            resource_version = None
        except errors.KodError as exc:
            retryable = errors.is_retryable(exc)
            if not retryable and not retry_refusals:
                raise
            delay = backoff[min(failures, len(backoff) - 1)] if backoff else 0.0
            failures += 1
            # A broken connection is routine; a refusal (401/403: credentials or RBAC) is worth
            # an error line, and is retried too: it may be fixed without restarting us.
            (log.warning if retryable else log.error)(
                "watch interrupted, resuming", path=path, attempt=failures, delay=delay, error=str(exc),
                resource_version=resource_version,
            )
            await asyncio.sleep(delay)


async def watch_changes(kube: KubeClient, path: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
    """`list_and_watch` (same arguments) as ADDED/MODIFIED/DELETED events only: the first list
    as ADDED; a later list (after 410) as ADDED for new objects, MODIFIED for changed ones
    (another resourceVersion) and DELETED, with its last known state, for each object that
    vanished meanwhile. Objects are keyed by uid."""
    known: dict[str, Mapping[str, Any]] = {}
    async for event in list_and_watch(kube, path, **kwargs):
        if event.type != "SYNC":
            assert event.object is not None
            if event.type == "DELETED":
                known.pop(_uid(event.object), None)
            else:
                known[_uid(event.object)] = event.object
            yield event
            continue
        fresh = {_uid(o): o for o in event.objects}
        for uid, obj in fresh.items():
            old = known.get(uid)
            if old is None:
                yield WatchEvent("ADDED", object=obj)
            elif _rv(old) != _rv(obj):
                yield WatchEvent("MODIFIED", object=obj)
        for uid, obj in known.items():
            if uid not in fresh:
                yield WatchEvent("DELETED", object=obj)
        known = fresh


class ObjectCache:
    """A read-only view of a collection kept current by `list_and_watch` (e.g. the Services the
    kubelet needs for service-link variables), keyed by (namespace, name). `ready` is set after
    the first SYNC."""

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
        """Keep the cache current until cancelled (`kwargs` as for `list_and_watch`)."""
        async for event in list_and_watch(kube, path, **kwargs):
            self.apply(event)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _uid(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace') or ''}/{meta.get('name') or ''}")


def _rv(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")
