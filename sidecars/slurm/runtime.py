"""The Slurm sidecar's pods: what the HTTP handlers call.

    runtime = Runtime(settings, hub)
    await runtime.start()          # records + one squeue: adopt jobs, roll back, cancel orphans
    status, created = await runtime.create(request)
    final = await runtime.delete("default", "web", uid=None, grace=5)
    await runtime.stop()           # jobs keep running; the next process adopts them

Contracts:
- One poller: every `poll_seconds` (a quarter of a second while a delete waits or a pod just
  submitted is still Pending) ONE squeue
  call lists every job; each pod's status is recomputed from its job's line and its job
  directory's files, and published on the watch hub when it changed. Nothing polls per pod.
- A pod is one job. Its record is written before sbatch and gets the job id after (records.py),
  so a crash never leaves a duplicate or an orphan: on start, jobs carrying this sidecar's
  comment without a record are cancelled, and records without a job are rolled back.
- Delete: SIGTERM to the job's shell (which passes it to the containers), SIGKILL to every
  process of the job after the grace period, and the answer only once squeue shows the job
  ended. activeDeadlineSeconds is enforced the same way, by the sidecar, to the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kod import __version__, errors, wire
from kod.hub import Hub
from kod.log import get_logger, pod_context
from sidecars.slurm import jobfiles, jobscript, jobstate, slurmcli, staging
from sidecars.slurm.images import ImageCache
from sidecars.slurm.records import Record, Records
from sidecars.slurm.settings import SlurmSidecarSettings

log = get_logger(__name__)

#: Poll interval while a delete or a deadline waits for a job to end.
FAST_POLL_SECONDS = 0.25
#: How long after sbatch a Pending pod makes the poller poll fast (its start is reported sooner).
STARTING_SECONDS = 60.0
#: A job sbatch accepted but squeue has not listed for this long is lost (listings may lag).
LOST_AFTER_SECONDS = 30.0
#: After the SIGKILL of a job's containers, how long the job gets to end before Slurm cancels it.
CANCEL_AFTER_KILL_SECONDS = 3.0
#: What one read of a log yields at most (a long log is streamed, not read whole).
LOG_CHUNK = 256 * 1024


def next_version(last: int) -> int:
    """Above the last version and microseconds since the epoch: versions keep increasing across
    restarts of the sidecar (vk_bridge and interlink keep the highest they saw)."""
    return max(last + 1, int(time.time() * 1_000_000))


@dataclass
class Entry:
    record: Record
    job_dir: Path
    job: jobstate.JobInfo | None = None
    status: wire.PodStatus | None = None
    version: int = 0
    lost: bool = False
    #: When sbatch answered (monotonic; 0 for adopted pods): a listing from before then may miss it.
    submitted: float = 0.0
    deadline_exceeded: bool = False
    delete_task: asyncio.Task[wire.PodStatus] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pod(self) -> wire.Pod:
        return self.record.request.pod

    @property
    def uid(self) -> str:
        return self.pod.metadata.uid


class Runtime:
    def __init__(self, settings: SlurmSidecarSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        root = settings.work_dir
        self.jobs_root = root / "jobs"
        self.records = Records(root / "records")
        self.images = ImageCache(root / "images", settings.docker_url)
        self.pods: dict[str, Entry] = {}
        self.ready = asyncio.Event()
        self.slurm_error: str | None = None
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._polled = asyncio.Event()
        self._fast = 0
        self._node_cache: tuple[float, wire.NodeInfo] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for d in (self.jobs_root, self.images.root):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._poller = asyncio.create_task(self._poll_forever(), name="slurm-poller")

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for e in list(self.pods.values()):
            if e.delete_task:
                e.delete_task.cancel()

    async def wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), 30)
        except TimeoutError as exc:
            raise errors.Unavailable(f"not synced with Slurm yet: {self.slurm_error}") from exc

    async def _adopt(self) -> None:
        """The first sync: records against one squeue listing."""
        jobs = await self._squeue()
        by_uid: dict[str, jobstate.JobInfo] = {}
        for job in jobs.values():
            uid = jobscript.parse_comment(self.settings.name, job.comment)
            if uid:
                prev = by_uid.get(uid)
                if prev is None or (job.active and not prev.active) or int(job.job_id) > int(prev.job_id):
                    by_uid[uid] = job
        known: set[str] = set()
        for record in self.records.load_all():
            uid = record.request.pod.metadata.uid
            job = by_uid.get(uid)
            if record.job_id is None:
                if job is None:
                    log.info("rolling back a create that never reached Slurm", **self._ctx(record.request.pod))
                    self.records.remove(uid)
                    staging.remove(self.jobs_root / uid)
                    continue
                record.job_id = job.job_id
                self.records.save(record)
            known.add(uid)
            entry = Entry(record=record, job_dir=self.jobs_root / uid)
            entry.job = jobs.get(record.job_id or "")
            entry.lost = entry.job is None
            self.pods[uid] = entry
            self._refresh(entry, publish=False)
            log.info("adopted", job=record.job_id, state=entry.job.state if entry.job else "gone",
                     **self._ctx(entry.pod))
            if record.deleting:
                entry.delete_task = asyncio.create_task(self._delete(entry, self._grace(entry, None)))
        for job in jobs.values():
            uid = jobscript.parse_comment(self.settings.name, job.comment)
            if uid and uid not in known and job.active:
                log.warning("cancelling an orphaned job (no pod record)", job=job.job_id, pod_uid=uid)
                await slurmcli.scancel(job.job_id, signal="KILL", full=True, timeout=self.settings.command_timeout_seconds)
                await slurmcli.scancel(job.job_id, timeout=self.settings.command_timeout_seconds)

    async def _squeue(self) -> dict[str, jobstate.JobInfo]:
        out = await slurmcli.run(jobstate.SQUEUE_ARGS, timeout=self.settings.command_timeout_seconds)
        return jobstate.parse_jobs(out)

    async def _poll_forever(self) -> None:
        delay = 0.5
        while not self.ready.is_set():
            try:
                await self._adopt()
                self.slurm_error = None
                self.ready.set()
            except (errors.KodError, OSError, TimeoutError) as exc:
                self.slurm_error = str(exc)
                log.warning("cannot sync with Slurm; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        while True:
            try:
                listed = time.monotonic()
                jobs = await self._squeue()
                self.slurm_error = None
                for entry in list(self.pods.values()):
                    self._update(entry, jobs, listed)
            except (errors.KodError, OSError, TimeoutError) as exc:
                if self.slurm_error is None:
                    log.warning("squeue failed", error=str(exc))
                self.slurm_error = str(exc)
            self._polled.set()
            self._polled = asyncio.Event()
            self._wake.clear()
            interval = FAST_POLL_SECONDS if self._fast or self._starting() else self.settings.poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    def _starting(self) -> bool:
        """A pod submitted in the last STARTING_SECONDS is not running yet: poll fast for it (still
        one squeue call per interval for all pods)."""
        recent = time.monotonic() - STARTING_SECONDS
        return any(e.submitted > recent and e.status is not None and e.status.phase == "Pending"
                   for e in self.pods.values())

    async def _next_poll(self) -> None:
        """Wait for the poll after the one running now."""
        await self._polled.wait()

    def _update(self, entry: Entry, jobs: dict[str, jobstate.JobInfo], listed: float) -> None:
        job_id = entry.record.job_id
        if job_id is None:
            return
        job = jobs.get(job_id)
        if job is not None:
            entry.job, entry.lost = job, False
        elif entry.job is not None and entry.job.active:
            entry.lost = True  # gone from `squeue --states=all` while it was active: lost
        elif entry.job is None and listed > entry.submitted + LOST_AFTER_SECONDS:
            entry.lost = True  # never listed, long after sbatch answered
        self._check_deadline(entry)
        self._refresh(entry)

    def _check_deadline(self, entry: Entry) -> None:
        limit = entry.pod.spec.activeDeadlineSeconds
        job = entry.job
        if limit is None or entry.deadline_exceeded or job is None or not job.active or job.start is None \
                or not job.running:
            return
        if datetime.now(UTC).timestamp() - job.start.timestamp() >= limit:
            entry.deadline_exceeded = True
            log.info("activeDeadlineSeconds exceeded; stopping the job", job=job.job_id, **self._ctx(entry.pod))
            asyncio.create_task(self._stop_job(entry, self._grace(entry, None)))

    def _refresh(self, entry: Entry, *, publish: bool = True) -> None:
        runs = jobstate.read_runs(entry.job_dir)
        status = jobstate.compute(entry.pod, entry.job, runs, deadline_exceeded=entry.deadline_exceeded,
                                  lost=entry.lost and entry.record.job_id is not None)
        if entry.status is None or status.model_dump(exclude={"version"}) != entry.status.model_dump(exclude={"version"}):
            entry.version = next_version(entry.version)
            status.version = entry.version
            entry.status = status
            entry.changed.set()
            entry.changed = asyncio.Event()
            if publish:
                self.hub.publish(wire.WatchEvent(type="STATUS", pod=status))

    # -- queries -----------------------------------------------------------------------------

    def list(self) -> list[wire.PodStatus]:
        return [e.status for e in self.pods.values() if e.status is not None]

    def _find(self, namespace: str, name: str, uid: str | None = None) -> Entry:
        for e in self.pods.values():
            m = e.pod.metadata
            if m.namespace == namespace and m.name == name and (uid is None or m.uid == uid):
                return e
        raise errors.NotFound(f'pod "{name}" not found in namespace "{namespace}" on this node')

    async def get(self, namespace: str, name: str) -> wire.PodStatus:
        e = self._find(namespace, name)
        assert e.status is not None
        return e.status

    @staticmethod
    def _ctx(pod: wire.Pod) -> dict[str, str]:
        return pod_context(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)

    # -- create ------------------------------------------------------------------------------

    async def create(self, request: wire.PodCreateRequest) -> tuple[wire.PodStatus, bool]:
        await self.wait_ready()
        pod = request.pod
        existing = self.pods.get(pod.metadata.uid)
        while existing is not None and existing.status is None:
            await existing.changed.wait()  # the same uid's create in flight: its outcome
            existing = self.pods.get(pod.metadata.uid)
        if existing is not None and existing.status is not None:
            return existing.status, False
        for e in self.pods.values():
            if e.pod.metadata.namespace == pod.metadata.namespace and e.pod.metadata.name == pod.metadata.name:
                raise errors.Conflict(f"pod {pod.metadata.namespace}/{pod.metadata.name} with another uid "
                                      f"({e.uid}) is still on this node")
        job_dir = self.jobs_root / pod.metadata.uid
        record = Record(request=request)
        entry = Entry(record=record, job_dir=job_dir)
        self.pods[pod.metadata.uid] = entry  # a second create of the uid waits for this one
        try:
            images = {}
            for c in (*pod.spec.initContainers, *pod.spec.containers):
                if c.image not in images:
                    images[c.image] = await self.images.ensure(c.image)
            s = self.settings
            plan = jobscript.plan_job(request, images, job_dir=job_dir, sidecar=s.name, partition=s.partition,
                                      account=s.account, default_memory=s.default_memory, default_uid=s.default_uid,
                                      default_gid=s.default_gid, min_uid=s.min_uid,
                                      max_uid=s.max_uid, default_grace=s.default_grace_period_seconds,
                                      resolve=lambda image, target: staging.resolve_in_tree(image.rootfs, target))
            self.records.save(record)
            await asyncio.to_thread(staging.stage, job_dir, request, plan, images)
            record.job_id = await slurmcli.sbatch(plan.options, plan.script, timeout=s.command_timeout_seconds)
            entry.submitted = time.monotonic()
            self.records.save(record)
        except BaseException:
            self.pods.pop(pod.metadata.uid, None)
            if record.job_id is None:
                self.records.remove(pod.metadata.uid)
                await asyncio.to_thread(staging.remove, job_dir)
            entry.changed.set()
            raise
        log.info("submitted", job=record.job_id, **self._ctx(pod))
        self._refresh(entry)
        self._wake.set()
        assert entry.status is not None
        return entry.status, True

    # -- delete ------------------------------------------------------------------------------

    def _grace(self, entry: Entry, grace: int | None) -> int:
        if grace is not None:
            return grace
        g = entry.pod.spec.terminationGracePeriodSeconds
        return self.settings.default_grace_period_seconds if g is None else g

    async def delete(self, namespace: str, name: str, *, uid: str | None, grace: int | None) -> wire.PodStatus:
        entry = self._find(namespace, name, uid)
        while entry.status is None:  # its create is in flight: let it finish (or fail) first
            await entry.changed.wait()
            entry = self._find(namespace, name, uid)
        if entry.delete_task is None:
            entry.record.deleting = True
            if entry.record.job_id is not None:
                self.records.save(entry.record)
            entry.delete_task = asyncio.create_task(self._delete(entry, self._grace(entry, grace)))
        return await asyncio.shield(entry.delete_task)

    async def _stop_job(self, entry: Entry, grace: int) -> None:
        """SIGTERM to the job's shell, SIGKILL to all of it after `grace`; returns once squeue
        shows the job ended (or no longer lists it)."""
        job_id = entry.record.job_id
        if job_id is None:
            return
        t = self.settings.command_timeout_seconds
        # The grace period counts from the delete, as a kubelet counts it from the kill's start:
        # not from when scancel (a process, slow on a loaded machine) returned.
        deadline = time.monotonic() + grace
        self._fast += 1
        try:
            job = entry.job
            if job is not None and not job.active and not entry.lost:
                return
            if job is None or job.state == "PENDING":
                await slurmcli.scancel(job_id, timeout=t)
            elif grace == 0:
                await slurmcli.scancel(job_id, signal="USR2", batch=True, timeout=t)
            else:
                await slurmcli.scancel(job_id, signal="TERM", batch=True, timeout=t)
            killed = grace == 0 or job is None or job.state == "PENDING"
            cancelled = job is None or job.state == "PENDING"
            while True:
                self._wake.set()
                # Until the next poll, but never past the next step's time: the kill is sent
                # when the grace period ends, not when a slow squeue happens to return.
                due = None if cancelled else deadline if not killed else deadline + CANCEL_AFTER_KILL_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._next_poll(), None if due is None else max(0.0, due - time.monotonic()))
                if entry.job is not None and not entry.job.active or entry.lost:
                    return
                now = time.monotonic()
                if not killed and now >= deadline:
                    # The grace period is over: the script SIGKILLs its containers and ends.
                    killed = True
                    await slurmcli.scancel(job_id, signal="USR2", batch=True, timeout=t)
                elif not cancelled and now >= deadline + CANCEL_AFTER_KILL_SECONDS:
                    cancelled = True  # the script did not end: Slurm's own cancel, the backstop
                    await slurmcli.scancel(job_id, timeout=t)
        finally:
            self._fast -= 1

    async def _delete(self, entry: Entry, grace: int) -> wire.PodStatus:
        await self._stop_job(entry, grace)
        self._refresh(entry, publish=False)
        final = entry.status
        assert final is not None
        if final.phase not in ("Succeeded", "Failed"):
            final = final.model_copy(update={"phase": "Failed"})
        self.pods.pop(entry.uid, None)  # first: the poller must not publish it without its files
        await asyncio.to_thread(staging.remove, entry.job_dir)
        self.records.remove(entry.uid)
        entry.version = next_version(entry.version)
        final = final.model_copy(update={"version": entry.version})
        self.hub.publish(wire.WatchEvent(type="DELETED", pod=final))
        log.info("deleted", job=entry.record.job_id, **self._ctx(entry.pod))
        return final

    # -- logs --------------------------------------------------------------------------------

    async def logs(self, namespace: str, name: str, container: str, opts: wire.LogOptions) -> AsyncIterator[bytes]:
        entry = self._find(namespace, name)
        names = [c.name for c in (*entry.pod.spec.initContainers, *entry.pod.spec.containers)]
        if container not in names:
            raise errors.NotFound(f'container "{container}" is not valid for pod "{name}"')
        runs = jobstate.read_runs(entry.job_dir).get(container, [])
        if opts.previous:
            if len(runs) < 2:
                raise errors.InvalidInput(f'previous terminated container "{container}" in pod "{name}" not found')
            run = len(runs) - 2
        else:
            if not runs:
                raise errors.InvalidInput(f'container "{container}" in pod "{name}" is waiting to start: '
                                          "ContainerCreating")
            run = len(runs) - 1
        return self._read_log(entry, f"{container}.{run}.log", f"{container}.{run}.exit", opts)

    async def _read_log(self, entry: Entry, log_name: str, exit_name: str,
                        opts: wire.LogOptions) -> AsyncIterator[bytes]:
        """The run's output file, opened once through `jobfiles` (the job's user owns it and may
        have swapped it for a symlink to a root-only file: that is refused, never followed) and
        read from that descriptor in chunks, following it until the run ends."""
        fd = self._open_log(entry, log_name)
        try:
            offset = 0
            budget = opts.limitBytes

            def cut(chunk: bytes) -> bytes:
                nonlocal budget
                if budget is None:
                    return chunk
                chunk = chunk[:budget]
                budget -= len(chunk)
                return chunk

            if fd is not None and opts.tailLines is not None:
                data, offset = jobfiles.tail(fd, opts.tailLines)
                if data:
                    yield cut(data)
            # Without follow: what was there when asked, however fast the container writes.
            end = (os.fstat(fd).st_size if fd is not None else 0) if not opts.follow else None
            while budget is None or budget > 0:
                done = self._run_done(entry, exit_name)
                if fd is None and opts.follow:
                    fd = self._open_log(entry, log_name)  # the script has not opened it yet
                want = LOG_CHUNK if end is None else min(LOG_CHUNK, end - offset)
                more = os.pread(fd, want, offset) if fd is not None and want > 0 else b""
                if more:
                    offset += len(more)
                    yield cut(more)
                elif done or not opts.follow:
                    return
                else:
                    await asyncio.sleep(0.2)
        finally:
            if fd is not None:
                os.close(fd)

    def _open_log(self, entry: Entry, name: str) -> int | None:
        jf = jobfiles.JobFiles.open(entry.job_dir)
        if jf is None:
            return None
        with jf:
            return jf.open_file("logs", name)

    def _run_done(self, entry: Entry, exit_name: str) -> bool:
        if entry.uid not in self.pods or (entry.job is not None and not entry.job.active):
            return True
        jf = jobfiles.JobFiles.open(entry.job_dir)
        if jf is None:
            return True
        with jf:
            return jf.read_small("state", exit_name) is not None

    # -- node --------------------------------------------------------------------------------

    async def node_info(self) -> wire.NodeInfo:
        """Capacity from sinfo (cached for 10 s), pods from the settings, and health."""
        now = time.monotonic()
        if self._node_cache and now - self._node_cache[0] < 10 and self.slurm_error is None:
            return self._node_cache[1]
        capacity: dict[str, str] = {}
        error = self.slurm_error
        try:
            nodes = await slurmcli.sinfo(self.settings.partition, timeout=self.settings.command_timeout_seconds)
            cpus = sum(n[0] for n in nodes)
            memory = sum(n[1] for n in nodes)
            gpus = 0
            for n in nodes:
                for g in n[2].split(","):
                    bits = g.split("(")[0].split(":")
                    if bits[0] == "gpu" and bits[-1].isdigit():
                        gpus += int(bits[-1])
            capacity = {"cpu": str(cpus), "memory": f"{memory}Mi"}
            if gpus:
                capacity[jobscript.GPU] = str(gpus)
            if not nodes:
                error = f"partition {self.settings.partition} has no nodes"
        except errors.KodError as exc:
            error = str(exc)
        capacity["pods"] = str(self.settings.capacity_pods)
        info = wire.NodeInfo(
            capacity=capacity, allocatable=dict(capacity), taints=list(self.settings.taints),
            labels=dict(self.settings.node_labels),
            sidecars=[wire.SidecarHealth(name=self.settings.name, ok=error is None, message=error)],
            version=f"kod-slurm-sidecar/{__version__} slurm",
        )
        if error is None:
            self._node_cache = (now, info)
        return info
