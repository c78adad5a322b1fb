"""Pod status from what Slurm and the job's files say. Pure, apart from `read_runs` (through `jobfiles`).

    jobs = parse_squeue(stdout)              # one `squeue` call for every pod, per interval
    runs = read_runs(job_dir)                # the script's state/<container>.<run>.start/.exit
    status = compute(pod, jobs.get(job_id), runs, now=time.time())

Slurm's job state gives the pod-level outcome (OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, PREEMPTED,
CANCELLED); the files give each container's runs, exit codes and OOM kills. The phase follows
the kubelet's rules: Pending until the init containers are done, Running while a main container
runs, Succeeded when every main container exited 0, Failed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kod import wire
from sidecars.slurm.jobfiles import JobFiles

#: squeue's output format: what `parse_squeue` reads (one line per job, fields split on '|').
SQUEUE_FORMAT = "%i|%T|%r|%S|%e|%j|%k"
SQUEUE_ARGS = ("squeue", "--all", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}")
#: sacct's equivalent, for sites with accounting (slurmdbd): the same fields, in this order.
SACCT_ARGS = ("sacct", "--allocations", "--noheader", "--parsable2",
              "--format=JobIDRaw,State,Reason,Start,End,JobName,Comment")

ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"})
#: States in which the job's processes may still run (a delete waits for them to end).
LIVE = ACTIVE

DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
#: Slurm's terminal states that are the pod's failure, not its containers': reason, message.
POD_FAILURES = {
    "TIMEOUT": ("DeadlineExceeded", DEADLINE_MESSAGE),
    "DEADLINE": ("DeadlineExceeded", DEADLINE_MESSAGE),
    "NODE_FAIL": ("NodeLost", "The Slurm node running the pod's job failed (NODE_FAIL)"),
    "BOOT_FAIL": ("NodeLost", "The Slurm node for the pod's job failed to boot (BOOT_FAIL)"),
    "PREEMPTED": ("Preempting", "The pod's Slurm job was preempted"),
    "REVOKED": ("NodeLost", "The pod's Slurm job was revoked"),
}


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    reason: str
    start: datetime | None
    end: datetime | None
    name: str
    comment: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT")


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text).astimezone(UTC) if text[:1].isdigit() else None
    except ValueError:
        return None


def parse_jobs(text: str) -> dict[str, JobInfo]:
    """Jobs by id from squeue (SQUEUE_FORMAT) or sacct (SACCT_ARGS) output. Job steps
    ("123.batch") and malformed lines are skipped; states such as "CANCELLED by 0" keep their
    first word. A job listed twice (requeued) keeps its last line."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 6)
        if len(parts) != 7 or not parts[0] or "." in parts[0]:
            continue
        job_id, state, reason, start, end, name, comment = parts
        if not job_id.split("_")[0].isdigit():
            continue
        state = state.split()[0] if state.split() else state
        jobs[job_id] = JobInfo(job_id, state.upper(), reason, _time(start), _time(end), name, comment.strip())
    return jobs


parse_squeue = parse_jobs


@dataclass(frozen=True)
class Run:
    """One run of a container, from the script's files."""

    started: datetime
    exit_code: int | None = None
    finished: datetime | None = None
    oom: bool = False


def _epoch(text: str) -> datetime:
    return datetime.fromtimestamp(float(text), UTC)


def parse_runs(files: dict[str, str]) -> dict[str, list[Run]]:
    """Runs per container from the contents of state/ (file name -> text): `<c>.<n>.start`
    holds the start epoch, `<c>.<n>.exit` "<code> <finish epoch> <oom 0|1>"."""
    starts: dict[tuple[str, int], str] = {}
    exits: dict[tuple[str, int], str] = {}
    for fname, text in files.items():
        base, _, kind = fname.rpartition(".")
        name, _, run = base.rpartition(".")
        if not name or not run.isdigit() or kind not in ("start", "exit"):
            continue
        (starts if kind == "start" else exits)[(name, int(run))] = text
    out: dict[str, list[Run]] = {}
    for (name, run) in sorted(starts, key=lambda k: (k[0], k[1])):
        try:
            started = _epoch(starts[(name, run)].strip())
        except ValueError:
            continue
        ex = exits.get((name, run), "").split()
        if len(ex) >= 2:
            try:
                r = Run(started, int(ex[0]), _epoch(ex[1]), len(ex) > 2 and ex[2] == "1")
            except ValueError:
                r = Run(started)
        else:
            r = Run(started)
        out.setdefault(name, []).append(r)
    return out


def read_runs(job_dir: Path) -> dict[str, list[Run]]:
    """`parse_runs` of the job's state/ directory (empty before the job started). The job's user
    owns those files: they are read through `jobfiles` (no symlink followed, nothing but the
    user's own regular files, a few bytes each)."""
    files: dict[str, str] = {}
    jf = JobFiles.open(job_dir)
    if jf is None:
        return {}
    with jf:
        for name in jf.names("state"):
            if name.endswith((".start", ".exit")):
                text = jf.read_small("state", name)
                if text is not None:
                    files[name] = text
    return parse_runs(files)


def _terminated(run: Run, container_id: str | None) -> wire.ContainerStateTerminated:
    code = run.exit_code if run.exit_code is not None else 137
    if run.oom:
        reason = "OOMKilled"
    else:
        reason = "Completed" if code == 0 else "Error"
    return wire.ContainerStateTerminated(
        exitCode=code, signal=code - 128 if code > 128 else None, reason=reason,
        startedAt=run.started, finishedAt=run.finished, containerID=container_id)


def container_status(c: wire.Container, runs: list[Run], job: JobInfo | None, *, waiting: str) -> wire.ContainerStatus:
    """One container's status: its latest run (a run without an exit in a job that ended was
    killed with it: exit 137, OOMKilled when the job ran out of memory), the one before as
    lastState, and the restart count."""
    cid = f"slurm://{job.job_id}/{c.name}" if job else None
    state = wire.ContainerState()
    ready = False
    if runs:
        latest = runs[-1]
        if latest.exit_code is None and job is not None and job.active:
            state = wire.ContainerState(running=wire.ContainerStateRunning(startedAt=latest.started))
            ready = True
        else:
            if latest.exit_code is None:
                ended = job.end if job else None
                latest = Run(latest.started, 137, ended, oom=bool(job and job.state == "OUT_OF_MEMORY"))
            state = wire.ContainerState(terminated=_terminated(latest, cid))
    else:
        state = wire.ContainerState(waiting=wire.ContainerStateWaiting(reason=waiting))
    last = wire.ContainerState(terminated=_terminated(runs[-2], cid)) if len(runs) > 1 else wire.ContainerState()
    return wire.ContainerStatus(
        name=c.name, state=state, lastState=last, ready=ready, started=ready if runs else False,
        restartCount=max(0, len(runs) - 1), image=c.image, imageID=c.image, containerID=cid if runs else None)


def compute(pod: wire.Pod, job: JobInfo | None, runs: dict[str, list[Run]], *, deadline_exceeded: bool = False,
            lost: bool = False) -> wire.PodStatus:
    """The pod's status (version 0). `job` None: not submitted yet, or no longer listed by
    Slurm (`lost` says the latter: it ended without leaving its files' outcome)."""
    meta, spec = pod.metadata, pod.spec
    inits_done = all(any(r.exit_code == 0 for r in runs.get(c.name, [])) for c in spec.initContainers)
    init_waiting = "PodInitializing" if job is not None and job.running else "ContainerCreating"
    init_statuses = []
    for c in spec.initContainers:
        init_statuses.append(container_status(c, runs.get(c.name, []), job, waiting=init_waiting))
    main_waiting = "PodInitializing" if spec.initContainers and not inits_done else "ContainerCreating"
    statuses = [container_status(c, runs.get(c.name, []), job, waiting=main_waiting) for c in spec.containers]
    status = wire.PodStatus(namespace=meta.namespace, name=meta.name, uid=meta.uid,
                            initContainerStatuses=init_statuses, containerStatuses=statuses)
    if job is not None and job.start is not None and (job.running or not job.active):
        status.startTime = job.start
    ended = job is not None and not job.active
    init_failed = any(s.state.terminated is not None and s.state.terminated.exitCode != 0 for s in init_statuses) \
        and spec.restartPolicy == "Never"
    if deadline_exceeded or (job is not None and job.state in POD_FAILURES):
        reason, message = POD_FAILURES.get(job.state if job else "", POD_FAILURES["TIMEOUT"]) \
            if not deadline_exceeded else POD_FAILURES["TIMEOUT"]
        status.phase, status.reason, status.message = "Failed", reason, message
        return status
    if ended or lost:
        terms = [s.state.terminated for s in statuses]
        if all(t is not None and t.exitCode == 0 for t in terms) and not init_failed:
            status.phase = "Succeeded"
        else:
            status.phase = "Failed"
            if job is not None and job.state == "OUT_OF_MEMORY":
                status.message = "The pod's Slurm job ran out of memory (OUT_OF_MEMORY)"
            elif job is not None and not any(runs.values()):
                status.message = f"Slurm job {job.job_id} ended {job.state} ({job.reason}) before any container ran"
            elif lost:
                status.message = "Slurm no longer lists the pod's job"
        return status
    if init_failed:
        status.phase = "Failed"
        return status
    if job is None or not job.running:
        if job is not None:
            status.message = f"Slurm job {job.job_id} {job.state.lower()} ({job.reason})"
        return status
    if inits_done and any(s.state.running or s.state.terminated for s in statuses):
        status.phase = "Running"
    return status
