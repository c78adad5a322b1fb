"""What the sidecar knows about each pod, rebuilt from Docker at any time.

A `PodState` holds the pod record, its infra container, and one `Slot` per container of the
pod; each slot holds the Docker containers that ran it (`Run`s, one per attempt: a restart is a
new container, as on a kubelet, so the previous one's exit status and logs stay available).
Everything here is derived from `docker inspect` (`PodState.apply`); nothing needs saving
elsewhere. Nothing here talks to the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from kod import labels as kl
from kod import wire
from sidecars.docker import naming
from sidecars.docker.record import PodRecord
from sidecars.docker.volumes import Locations, PlannedVolume

_ZERO_TIME = "0001-01-01T00:00:00Z"

#: Events of a pod kept for its status (distinct reason and message; repeats count up).
MAX_EVENTS = 16


def utcnow() -> datetime:
    """The runtime's clock (statuses, deadlines, versions)."""
    return datetime.now(timezone.utc)


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 timestamps (nanoseconds; the zero time means 'never')."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass
class Run:
    """One Docker container: one attempt of a pod's container (or the infra container)."""

    id: str
    attempt: int
    state: str  # Docker's State.Status: created, running, paused, restarting, removing, exited, dead
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image_id: str = ""
    ip: str | None = None

    @classmethod
    def from_inspect(cls, data: dict[str, Any], attempt: int = 0) -> Run:
        st = data.get("State") or {}
        ip = None
        net = data.get("NetworkSettings") or {}
        for settings in (net.get("Networks") or {}).values():
            if settings and settings.get("IPAddress"):
                ip = settings["IPAddress"]
                break
        started = parse_docker_time(st.get("StartedAt"))
        finished = parse_docker_time(st.get("FinishedAt"))
        if started is not None and finished is not None and finished < started:
            # The engine stamps a process that exits at once with an end a little before its
            # start; nobody should see a container finish before it started.
            finished = started
        return cls(
            id=str(data["Id"]),
            attempt=attempt,
            state=str(st.get("Status") or "created"),
            exit_code=int(st.get("ExitCode") or 0),
            oom_killed=bool(st.get("OOMKilled")),
            error=str(st.get("Error") or ""),
            started_at=started,
            finished_at=finished,
            image_id=str(data.get("Image") or ""),
            ip=ip or None,
        )

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    @property
    def start_failed(self) -> bool:
        """Docker created it but could not start it (e.g. the executable does not exist)."""
        return self.state == "created" and bool(self.error)

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "dead", "removing") or self.start_failed

    @property
    def pending_start(self) -> bool:
        return self.state == "created" and not self.error


@dataclass
class Slot:
    """One container of the pod spec and its runs."""

    name: str
    role: Literal["init", "main"]
    spec: wire.Container
    #: An init container with restartPolicy Always (a "sidecar" that keeps running).
    restartable: bool = False
    runs: dict[int, Run] = field(default_factory=dict)
    #: Why the next run could not be created (reason, message), e.g. ErrImageNeverPull.
    waiting: tuple[str, str] | None = None
    #: Creates the engine refused in a row (CreateContainerError), for the retry back-off.
    create_failures: int = 0
    # --- the kubelet's own state of the container (probes, hooks, messages; `probes.py`,
    # `hooks.py`, `termination.py`): not in Docker, so a restarted sidecar starts it afresh ---
    #: Probe kind ("startup", "liveness", "readiness") -> (container id, succeeded): the
    #: kubelet's results managers; a result is about the run of that id only.
    probe_results: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: A kill the kubelet decided (a failed liveness or startup probe, a failed postStart
    #: hook): (container id, the Killing event's message, grace period or None for the pod's).
    kill: tuple[str, str, int | None] | None = None
    #: The container id whose postStart hook runs now (its status says ContainerCreating).
    post_start: str | None = None
    #: Container id -> termination message read when that run finished.
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def latest(self) -> Run | None:
        return self.runs[max(self.runs)] if self.runs else None

    @property
    def previous(self) -> Run | None:
        if len(self.runs) < 2:
            return None
        keys = sorted(self.runs)
        return self.runs[keys[-2]]


@dataclass
class PodState:
    """A pod the sidecar runs."""

    record: PodRecord
    created: datetime
    planned: dict[str, PlannedVolume]
    locations: Locations = field(default_factory=Locations)
    infra_id: str | None = None
    infra: Run | None = None
    #: A delete is under way (possibly started by an earlier process).
    deleting: bool = False
    #: The infra container carries the `_deleting` name already.
    renamed: bool = False
    #: The private volumes hold their complete contents.
    populated: bool = False
    #: Volume contents from the create request, held in memory only until they are written.
    contents: list[wire.ResolvedVolume] | None = None
    #: Size of the pod's tmpfs in bytes (its contents and memory emptyDirs, bounded).
    memory_volume_size: int = 0
    #: Why the current policy refuses this pod (set when a restarted sidecar adopts a pod its
    #: new settings forbid): the pod is stopped and reported Failed with this message.
    refused: str | None = None
    slots: dict[str, Slot] = field(default_factory=dict)
    last_ip: str | None = None
    #: The last status computed, and its version.
    status: wire.PodStatus | None = None
    version: int = 0
    # --- coordination (never persisted) ---
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dirty: bool = False
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    deletion: asyncio.Future[wire.PodStatus] | None = None
    grace: int | None = None
    #: Container ids to inspect on the next refresh, whatever happened meanwhile.
    stale: set[str] = field(default_factory=set)
    #: Container id -> engine time of the latest event about it not yet refreshed (inf when its
    #: time cannot be compared): the refresh skips it when an inspect was sent after that event.
    #: Why deferred to the refresh: an event often arrives before the call that caused it has
    #: answered (the create event before the create's answer), and that call's own inspect, sent
    #: later, already holds the event's effect.
    events: dict[str, float] = field(default_factory=dict)
    #: Container id -> wall-clock time an inspect of it was last sent: an event from before that
    #: is already reflected, so it needs no second inspect.
    inspected: dict[str, float] = field(default_factory=dict)
    #: The pod's recent Kubernetes events, (type, reason, message) -> event, oldest first
    #: (`note`); reported in its status, from which the virtual kubelet records them.
    pod_events: dict[tuple[str, str, str], wire.PodEvent] = field(default_factory=dict)

    def note(self, type_: Literal["Normal", "Warning"], reason: str, message: str, now: datetime | None = None) -> None:
        """Record an event of the pod; the same one again counts up (as the kubelet's event
        correlator aggregates). Only the `MAX_EVENTS` most recent are kept. The caller kicks
        the pod's worker so that the status carrying it goes out."""
        when = now or utcnow()
        key = (type_, reason, message)
        old = self.pod_events.pop(key, None)
        if old is not None:
            event = old.model_copy(update={"count": old.count + 1, "lastTimestamp": when})
        else:
            event = wire.PodEvent(type=type_, reason=reason, message=message, firstTimestamp=when, lastTimestamp=when)
        self.pod_events[key] = event
        while len(self.pod_events) > MAX_EVENTS:
            del self.pod_events[next(iter(self.pod_events))]

    def knows(self, container_id: str) -> bool:
        return container_id == self.infra_id or self.slot_by_id(container_id) is not None

    def runs(self) -> Iterator[Run]:
        """Every run of every container of the pod (not the infra container)."""
        for slot in self.slots.values():
            yield from slot.runs.values()

    def apply(self, data: dict[str, Any]) -> None:
        """Take in a `docker inspect` of one of the pod's containers (the infra container, or a
        run of a slot, told apart by their labels); one of no known slot is ignored."""
        labels = (data.get("Config") or {}).get("Labels") or {}
        role = labels.get(naming.ROLE)
        if role == "infra":
            self.infra_id = data["Id"]
            self.infra = Run.from_inspect(data)
            if self.infra.ip:
                self.last_ip = self.infra.ip
            if naming.is_deleting(str(data.get("Name", ""))):
                self.deleting = self.renamed = True
            return
        slot = self.slots.get(labels.get(kl.D_CONTAINER, ""))
        if slot is None:
            return
        try:
            attempt = int(labels.get(naming.ATTEMPT, "0"))
        except ValueError:
            return
        slot.runs[attempt] = Run.from_inspect(data, attempt)

    def forget(self, container_id: str) -> None:
        """The engine says the container is gone: drop it (the infra container: `infra` None)."""
        self.inspected.pop(container_id, None)
        if container_id == self.infra_id:
            self.infra = None
            return
        found = self.slot_by_id(container_id)
        if found is not None:
            slot, run = found
            del slot.runs[run.attempt]

    def next_version(self) -> int:
        """The version for the pod's next status: above the last one, and microseconds since the
        epoch, so versions keep increasing across restarts of the sidecar."""
        return max(self.version + 1, int(utcnow().timestamp() * 1_000_000))

    @property
    def uid(self) -> str:
        return self.record.pod.metadata.uid

    @property
    def namespace(self) -> str:
        return self.record.pod.metadata.namespace

    @property
    def name(self) -> str:
        return self.record.pod.metadata.name

    @property
    def spec(self) -> wire.PodSpec:
        return self.record.pod.spec

    @property
    def set_up(self) -> bool:
        """The infra container was started and the volumes written: containers may run."""
        return self.infra is not None and self.infra.started_at is not None and self.populated

    def slot_by_id(self, container_id: str) -> tuple[Slot, Run] | None:
        for slot in self.slots.values():
            for run in slot.runs.values():
                if run.id == container_id:
                    return slot, run
        return None

    @classmethod
    def new(cls, record: PodRecord, created: datetime, planned: dict[str, PlannedVolume]) -> PodState:
        pod = cls(record=record, created=created, planned=planned)
        for c in record.pod.spec.initContainers:
            pod.slots[c.name] = Slot(c.name, "init", c, restartable=c.restartPolicy == "Always")
        for c in record.pod.spec.containers:
            pod.slots[c.name] = Slot(c.name, "main", c)
        return pod
