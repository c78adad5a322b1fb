"""The pod runtime: runs pods as Docker containers and keeps their status, driven by Docker events.

    runtime = Runtime(settings, engine, hub)
    await runtime.start()              # event stream + resync (rebuilds the pod table from Docker)
    status, created = await runtime.create(request)
    await runtime.delete("default", "web", uid=None, grace=0)
    await runtime.stop()               # pods keep running; a new process adopts them

`Runtime` is the facade the HTTP handlers call; each job lives in a module of its own:

    events.py     the engine's event stream: reconnects, resyncs, marks containers stale
    adoption.py   resync after every (re)connect: adopt pods, roll back unfinished set-ups, orphans
    worker.py     the per-pod worker: refresh (inspect), reconcile, publish; timers
    reconcile.py  the next steps of one pod: init order, restarts and back-off, stopping
    probes.py     startup, liveness and readiness probes (grpc_health.py: the grpc ones)
    hooks.py      postStart and preStop hooks;  termination.py  termination messages
    create.py     admitting a pod and setting it up (volumes, infra container, contents)
    volume_updates.py, atomic_writer.py   live updates of Secret/ConfigMap/token volumes
    claims.py     PersistentVolumeClaims as Docker volumes: made for confirmed claims, collected
    policy.py, ceilings.py   what the desktop admits (checked at create and again at adoption)
    mounter.py    host paths and writable subPaths, opened safely and staged (hostfs, staging)
    delete.py     stopping a pod and removing its objects, also after a crash
    stop.py       the one stop sequence (deletes, failed pods, finished pods)
    node.py, pod_logs.py   what ping and `kubectl logs` read
    exec_streams.py, portforward.py   `kubectl exec`/`attach` and `port-forward` streams
    table.py, images.py, tasks.py   the pod table, the image cache, background tasks

Contracts of the whole (see each module for its own):
- A pod is the infra container (record + namespaces + private volumes) and one Docker container
  per run of each of its containers. An answered create survives a crash (the answer comes after
  the set-up); an unanswered one is rolled back by the next process, and its caller creates the
  pod again.
- No polling: events (and timers for back-offs and deadlines) drive a pod's worker; no lock is
  shared between pods, and none is held across a wait for a container to finish.
- On (re)connecting to the engine's event stream everything is listed again, so a restart of the
  sidecar or of dockerd never loses a change, and orphans are removed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from kod import errors, quantity, wire
from kod.hub import Hub
from kod.log import get_logger
from sidecars.docker.adoption import Adoption
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.claims import ClaimVolumes
from sidecars.docker.create import Creator
from sidecars.docker.delete import Deleter
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.events import EventStream
from sidecars.docker.images import ImageCache
from sidecars.docker.mounter import Mounter
from sidecars.docker.netns import SANDBOXES, Sandbox
from sidecars.docker.network import HostRulesMissing, PodNetwork
from sidecars.docker.node import host_memory, node_info
from sidecars.docker.pod_logs import open_logs
from sidecars.docker.policy import Rules, loosenings
from sidecars.docker.reconcile import Reconciler
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.table import PodTable
from sidecars.docker.tasks import Background
from sidecars.docker.usage import Usage
from sidecars.docker.volume_updates import VolumeUpdater
from sidecars.docker.worker import Worker


log = get_logger(__name__)


class Runtime:
    """The Docker sidecar's pods: what the HTTP handlers call."""

    def __init__(self, settings: DockerSidecarSettings, engine: Engine, hub: Hub) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.table = PodTable()
        self.background = Background()
        self.images = ImageCache(engine)
        self.network = PodNetwork(settings, engine)
        self.mounter = Mounter(settings)
        self.claims = ClaimVolumes(settings, engine, self.table, self.background)
        self.reconciler = Reconciler(settings, engine, self.images, self.background, self.mounter, self.ceilings)
        self.worker = Worker(settings, engine, self.table, hub, self.reconciler.reconcile)
        self.reconciler.kick = self.worker.kick
        self.deleter = Deleter(
            settings, engine, self.table, hub, self.worker, self.background, self.wait_ready, self.mounter, self.claims
        )
        self.creator = Creator(
            settings, engine, self.table, self.images, hub, self.worker, self.reconciler, self.wait_ready, self.rules,
            self.claims, self.network,
        )
        self.adoption = Adoption(
            settings, engine, self.table, self.worker, self.deleter, self.rules, self.mounter, self.claims
        )
        self.events = EventStream(settings, engine, self.table, self.images, self.worker, self.adoption)
        self._events_task: asyncio.Task[None] | None = None
        self.usage_reader = Usage(engine)
        self.volume_updater = VolumeUpdater(self.table, self.mounter)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Say what the policy loosens, prepare the staging mounts, then start following the
        engine (the first resync sets `ready`), with the pods' network and its host rules in place
        first (Unavailable when they cannot be: network.host_rules = "on")."""
        for warning in loosenings(self.settings):
            log.warning("the desktop policy is loosened (see docs/security.md)", loosening=warning)
        await self.mounter.start()
        try:
            await self.network.ensure()
            await self.network.protect_all()
        except HostRulesMissing:
            raise
        except (EngineError, errors.Unavailable) as exc:
            # The engine is away: the first create ensures the network once it answers.
            log.warning("the pods' network is not ready yet", error=str(exc))
        self._events_task = asyncio.create_task(self.events.follow(), name="docker-events")

    async def stop(self) -> None:
        """Stop the event stream, workers, timers and background tasks. Pods keep running in Docker."""
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
        await asyncio.gather(self.background.cancel_all(), self.worker.stop())
        await self.mounter.close()

    # ------------------------------------------------------------------ admission

    def ceilings(self) -> Ceilings:
        """The ceilings of pods now (the maxima default to the node's memory and CPUs)."""
        cap, info = self.settings.capacity, self.events.engine_info if hasattr(self, "events") else {}
        memory = quantity.to_bytes(cap.memory) if cap.memory else int(info.get("MemTotal") or host_memory() or 0) or None
        cpus = quantity.to_millicores(cap.cpu) if cap.cpu else int(info.get("NCPU") or os.cpu_count() or 0) * 1000 or None
        return Ceilings.resolve(self.settings.limits, node_memory=memory, node_cpu_millis=cpus)

    def rules(self) -> Rules:
        """What the desktop admits now (create, and adoption after a restart)."""
        return Rules(self.settings.policy, self.ceilings(), self.mounter.no_staging)

    @property
    def ready(self) -> asyncio.Event:
        """Set once the first sync with the engine completed."""
        return self.events.ready

    @property
    def engine_error(self) -> str | None:
        """Why the engine is unreachable; None while connected and synced."""
        return self.events.engine_error

    async def wait_ready(self) -> None:
        """Wait for the first sync with the engine; Unavailable after the configured timeout."""
        await self.events.wait_ready()

    # ------------------------------------------------------------------ pods

    async def create(self, request: wire.PodCreateRequest) -> tuple[wire.PodStatus, bool]:
        """Accept a pod: (status, True) when created now, (status, False) when the uid existed.
        Raises InvalidInput (400), Forbidden (403: the policy refused it; nothing is created),
        Conflict (409: another pod of that name exists) or Unavailable (503)."""
        return await self.creator.create(request)

    async def delete(self, namespace: str, name: str, *, uid: str | None, grace: int | None) -> wire.PodStatus:
        """Stop the pod's containers and remove its objects (PVC volumes stay); the final status.
        May be called more than once; NotFound when the pod is (already) gone."""
        return await self.deleter.delete(namespace, name, uid=uid, grace=grace)

    async def update_volumes(self, namespace: str, name: str, update: wire.VolumeUpdate) -> wire.VolumeUpdateResult:
        """Swap in new contents of the pod's content volumes (volume_updates.py)."""
        await self.wait_ready()
        return await self.volume_updater.update(namespace, name, update)

    def list(self) -> list[wire.PodStatus]:
        """The status of every pod (including pods being deleted)."""
        return [self.worker.status_of(p) for p in self.table]

    async def get(self, namespace: str, name: str) -> wire.PodStatus:
        """The pod's status; NotFound when no such pod runs here."""
        await self.wait_ready()
        return self.worker.status_of(self.table.lookup(namespace, name))

    async def logs(
        self, namespace: str, name: str, container: str, opts: wire.LogOptions
    ) -> AsyncIterator[bytes]:
        """The container's log bytes as `kubectl logs` expects them. Raises before the first
        byte: NotFound (no such pod or container), InvalidInput (nothing to show yet)."""
        await self.wait_ready()
        return await open_logs(self.engine, self.table.lookup(namespace, name), container, opts)

    async def running_container(self, namespace: str, name: str, container: str) -> tuple[str, wire.Container]:
        """The Docker container running a pod's container now, and its spec (exec, attach).
        Raises NotFound (no such pod or container) or InvalidInput (it is not running)."""
        await self.wait_ready()
        pod = self.table.lookup(namespace, name)
        slot = pod.slots.get(container)
        if slot is None:
            raise errors.NotFound(f'container "{container}" is not valid for pod "{name}"')
        run = slot.latest
        if run is None or run.state != "running":
            raise errors.InvalidInput(f'container "{container}" in pod "{name}" is not running')
        return run.id, slot.spec

    async def sandbox(self, namespace: str, name: str) -> Sandbox:
        """The pod's network namespace (its infra container's, which the pod's containers
        share), for port-forward. NotFound, InvalidInput when its sandbox does not run, or
        Unavailable when its namespace is not known for sure (netns.py)."""
        await self.wait_ready()
        pod = self.table.lookup(namespace, name)
        if pod.infra_id is None:
            raise errors.InvalidInput(f'pod "{name}" has no running sandbox')
        return await SANDBOXES.of_container(self.engine, pod.infra_id)

    # ------------------------------------------------------------------ node

    def node_info(self) -> wire.NodeInfo:
        """Capacity (settings, else the engine), labels, taints and health, for ping."""
        return node_info(
            self.settings,
            engine_info=self.events.engine_info,
            engine_version=self.events.engine_version,
            engine_error=self.events.engine_error,
        )

    async def usage(self) -> wire.UsageReport:
        """What `kubectl top` shows (GET /v1/stats): the machine, and each pod's running
        containers, read now (sidecars.docker.usage)."""
        await self.wait_ready()
        root = str(self.events.engine_info.get("DockerRootDir") or "/")
        return await self.usage_reader.report(list(self.table), data_root=root if os.path.isdir(root) else "/")
