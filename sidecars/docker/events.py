"""The engine's event stream: how the sidecar learns that anything of its pods changed.

    stream = EventStream(settings, engine, table, images, worker, adoption)
    task = asyncio.create_task(stream.follow())   # forever; cancel to stop
    await stream.wait_ready()                     # the first resync is done

Contracts:
- One stream of container and image events, followed forever: when it breaks it is opened again
  after the settings' back-off, and after every (re)subscription everything is listed again
  (`Adoption.resync`) before `ready` is set, so a change made while the stream was down is never
  lost. `engine_error` says why the engine is unreachable (None while connected).
- An event about a container of one of this sidecar's pods (by its labels) marks the container
  for inspection and kicks the pod's worker; one whose effect an inspect sent after it already
  saw (same host clock) costs nothing. Events of other sidecars' objects, of unknown pods (a
  resync finds those) and of a container this process has just created are ignored.
- Image events clear the image cache; an image arriving kicks the pods waiting for it.
- Handling an event never blocks and never awaits.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from kod import errors
from kod import labels as kl
from kod.log import get_logger
from sidecars.docker import naming
from sidecars.docker.adoption import Adoption
from sidecars.docker.engine import Engine
from sidecars.docker.images import ImageCache
from sidecars.docker.reconcile import IMAGE_NEVER_PULL
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.table import PodTable
from sidecars.docker.worker import Worker

log = get_logger(__name__)

#: Docker container events that may change a pod's status.
CONTAINER_ACTIONS = frozenset({"create", "start", "die", "oom", "destroy", "rename", "pause", "unpause", "kill"})
#: Image events after which a missing image may exist.
IMAGE_ARRIVED = frozenset({"tag", "load", "import", "pull"})
IMAGE_CHANGED = IMAGE_ARRIVED | frozenset({"untag", "delete"})


class EventStream:
    """Follows the engine's events; knows whether the engine is connected and synced."""

    def __init__(
        self,
        settings: DockerSidecarSettings,
        engine: Engine,
        table: PodTable,
        images: ImageCache,
        worker: Worker,
        adoption: Adoption,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.table = table
        self.images = images
        self.worker = worker
        self.adoption = adoption
        #: Set once the first resync with the engine completed.
        self.ready = asyncio.Event()
        self.engine_error: str | None = "not connected yet"
        self.engine_info: dict[str, Any] = {}
        self.engine_version: str = ""
        #: The engine runs on this machine (a unix socket): its event times and ours compare.
        self._same_clock = settings.docker_url.startswith("unix://")

    async def wait_ready(self) -> None:
        """Wait for the first sync with the engine; Unavailable after the configured timeout."""
        if self.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.ready.wait(), self.settings.ready_timeout_seconds)
        except TimeoutError as exc:
            raise errors.Unavailable(
                f"the Docker engine is not reachable ({self.engine_error})",
                hint="start dockerd (`python -m localenv up`); the sidecar reconnects by itself",
            ) from exc

    async def follow(self) -> None:
        """Follow the engine's events forever; after every (re)connect, resync everything."""
        backoff = self.settings.events_backoff_seconds
        failures = 0
        while True:
            try:
                # Only the actions that matter: exec probes and hooks make three exec events each,
                # which the engine then never sends.
                wanted = {"type": ["container", "image"], "event": sorted(CONTAINER_ACTIONS | IMAGE_CHANGED)}
                async for event in self.engine.events(wanted):
                    if event.get("Type") == "kod.subscribed":
                        await self._connected()
                        failures = 0
                        continue
                    self.on_event(event)
                raise errors.Unavailable("the engine closed the event stream")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following whatever happens
                self.engine_error = str(exc)
                delay = backoff[min(failures, len(backoff) - 1)]
                failures += 1
                log.warning("Docker event stream lost; reconnecting", error=str(exc), attempt=failures, delay=delay)
                await asyncio.sleep(delay)

    async def _connected(self) -> None:
        version = await self.engine.version()
        self.engine_version = str(version.get("Version", ""))
        self.engine_info = await self.engine.info()
        await self.adoption.resync()
        self.engine_error = None
        if not self.ready.is_set():
            log.info("synced with the Docker engine", pods=len(self.table), engine=self.engine_version)
        self.ready.set()

    def on_event(self, event: dict[str, Any]) -> None:
        """Take in one engine event (never blocks)."""
        kind = event.get("Type")
        action = str(event.get("Action", "")).split(":", 1)[0]
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        if kind == "image":
            if action in IMAGE_CHANGED:
                self.images.clear()
            if action in IMAGE_ARRIVED:
                for pod in self.table:
                    if any(s.waiting and s.waiting[0] == IMAGE_NEVER_PULL for s in pod.slots.values()):
                        self.worker.kick(pod)
            return
        if kind != "container" or action not in CONTAINER_ACTIONS:
            return
        if attrs.get(kl.D_MANAGED_BY) != naming.MANAGED_BY_VALUE or attrs.get(naming.SIDECAR) != self.settings.name:
            return
        target = self.table.get(attrs.get(kl.D_POD_UID, ""))
        if target is None:
            return  # not ours (yet): a resync finds orphans
        cid = str(actor.get("ID", ""))
        if action == "create" and target.knows(cid):
            return  # this process created it and knows its state
        when = float(event.get("timeNano") or 0) / 1e9
        if not (self._same_clock and when):
            when = math.inf
        if when < target.inspected.get(cid, 0.0):
            return  # an inspect sent after the event already saw its effect
        target.events[cid] = max(when, target.events.get(cid, 0.0))
        self.worker.kick(target)
