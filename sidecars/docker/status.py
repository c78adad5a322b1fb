"""Pod and container status from what Docker reports, exactly as the kubelet computes it.

Pure functions of a `PodState` and the time: the same Docker state always gives the same status,
so a restarted sidecar reports what the previous one did. The phase follows the kubelet's
`getPhase` (pkg/kubelet/kubelet_pods.go); restart decisions and CrashLoopBackOff delays follow
the kubelet's too, so that the reconciler and the status agree on what happens next.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kod import wire
from sidecars.docker import probes, termination
from sidecars.docker.settings import RestartSettings
from sidecars.docker.state import PodState, Run, Slot

#: The exit code runtimes report when a container could not be started at all.
START_ERROR_EXIT_CODE = 128

#: Pod-level failure reasons (PodStatus.reason).
DEADLINE_EXCEEDED = "DeadlineExceeded"
SANDBOX_DIED = "PodSandboxDied"
#: The desktop policy in force refuses the pod (a restarted sidecar with stricter settings); the
#: same reason the virtual kubelet gives a pod the sidecar refused at create.
REFUSED = "Forbidden"


def failed(run: Run) -> bool:
    """The run ended in failure (non-zero exit, or it could not start)."""
    return run.start_failed or run.exit_code != 0


def restart_wanted(restart_policy: str, slot: Slot, run: Run) -> bool:
    """Whether the kubelet would run `slot` again after `run` finished."""
    if slot.role == "init":
        if slot.restartable:
            return True
        return failed(run) and restart_policy != "Never"
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return failed(run)
    return False


def restart_delay(run: Run, settings: RestartSettings) -> float:
    """CrashLoopBackOff: the first restart is immediate, then 10 s, 20 s, ... up to 5 min; a run
    that lasted long enough resets the back-off."""
    if run.attempt == 0:
        return 0.0
    if run.started_at and run.finished_at and (run.finished_at - run.started_at).total_seconds() >= settings.reset_after_seconds:
        return 0.0
    return float(min(settings.initial_seconds * 2 ** (run.attempt - 1), settings.max_seconds))


def restart_due(run: Run, settings: RestartSettings) -> datetime | None:
    """When the next run may start (None: the run has not finished)."""
    end = run.finished_at
    if end is None:
        return None
    return end + timedelta(seconds=restart_delay(run, settings))


def terminated(run: Run, message: str | None = None) -> wire.ContainerStateTerminated:
    """The terminated state of a finished run; `message` is its termination message."""
    if run.start_failed:
        return wire.ContainerStateTerminated(
            exitCode=START_ERROR_EXIT_CODE,
            reason="StartError",
            message=run.error,
            finishedAt=run.finished_at,
            containerID=f"docker://{run.id}",
        )
    reason = "OOMKilled" if run.oom_killed else ("Completed" if run.exit_code == 0 else "Error")
    return wire.ContainerStateTerminated(
        exitCode=run.exit_code,
        signal=run.exit_code - 128 if run.exit_code > 128 else None,
        reason=reason,
        message=message or None,
        startedAt=run.started_at,
        finishedAt=run.finished_at,
        containerID=f"docker://{run.id}",
    )


def _terminated(pod: PodState, slot: Slot, run: Run) -> wire.ContainerStateTerminated:
    return terminated(run, termination.budget(pod, slot.messages.get(run.id)))


def _default_waiting(pod: PodState, slot: Slot) -> wire.ContainerStateWaiting:
    if slot.waiting is not None:
        return wire.ContainerStateWaiting(reason=slot.waiting[0], message=slot.waiting[1])
    # The kubelet's default for a container that has none yet, init containers done or not
    # (convertToAPIContainerStatuses): a main container that never got one because the pod
    # failed after its init containers (its deadline) still reads PodInitializing there.
    if slot.role == "init" or any(s.role == "init" for s in pod.slots.values()):
        return wire.ContainerStateWaiting(reason="PodInitializing")
    return wire.ContainerStateWaiting(reason="ContainerCreating")


def container_status(pod: PodState, slot: Slot, now: datetime, settings: RestartSettings) -> wire.ContainerStatus:
    """One container's status: its latest run, the one before as lastState, restart count."""
    run = slot.latest
    status = wire.ContainerStatus(name=slot.name, image=slot.spec.image)
    if run is None:
        status.state = wire.ContainerState(waiting=_default_waiting(pod, slot))
        status.started = False
        return status
    status.restartCount = run.attempt
    status.imageID = run.image_id
    status.containerID = f"docker://{run.id}"
    prev = slot.previous
    if prev is not None and prev.finished:
        status.lastState = wire.ContainerState(terminated=_terminated(pod, slot, prev))
    if run.running and slot.post_start == run.id:
        # Its postStart hook runs: the kubelet reports the container once the hook returned.
        status.state = wire.ContainerState(waiting=wire.ContainerStateWaiting(reason="ContainerCreating"))
        status.started = False
    elif run.running:
        status.state = wire.ContainerState(running=wire.ContainerStateRunning(startedAt=run.started_at))
        status.started = probes.started(slot, run)
        status.ready = probes.ready(slot, run)
    elif run.finished:
        will_restart = (
            not pod.deleting
            and pod_failure(pod, now) is None
            and restart_wanted(pod.spec.restartPolicy, slot, run)
            and not (slot.restartable and main_done(pod))
        )
        if will_restart:
            status.lastState = wire.ContainerState(terminated=_terminated(pod, slot, run))
            if slot.waiting is not None:
                waiting = wire.ContainerStateWaiting(reason=slot.waiting[0], message=slot.waiting[1])
            else:
                due = restart_due(run, settings)
                delay = restart_delay(run, settings)
                if due is not None and due > now and delay > 0:
                    waiting = wire.ContainerStateWaiting(
                        reason="CrashLoopBackOff",
                        message=f"back-off {delay:g}s restarting failed container={slot.name} "
                        f"pod={pod.name}_{pod.namespace}({pod.uid})",
                    )
                else:
                    waiting = wire.ContainerStateWaiting(reason="ContainerCreating")
            status.state = wire.ContainerState(waiting=waiting)
        else:
            status.state = wire.ContainerState(terminated=_terminated(pod, slot, run))
            # The kubelet reports a regular init container that completed as ready.
            status.ready = slot.role == "init" and not slot.restartable and not failed(run)
        status.started = False
    else:  # created, not started yet
        status.state = wire.ContainerState(waiting=wire.ContainerStateWaiting(reason="ContainerCreating"))
        status.started = False
    return status


def main_done(pod: PodState) -> bool:
    """Every main container finished and the restart policy runs none of them again (restartable
    init containers are then stopped, and the pod is terminal)."""
    for slot in pod.slots.values():
        if slot.role != "main":
            continue
        run = slot.latest
        if run is None or not run.finished or restart_wanted(pod.spec.restartPolicy, slot, run):
            return False
    return True


def init_failed(pod: PodState) -> bool:
    """A regular init container failed and the restart policy (Never) runs it no more: the pod is
    Failed and its main containers never start."""
    if pod.spec.restartPolicy != "Never":
        return False
    for slot in pod.slots.values():
        if slot.role == "init" and not slot.restartable:
            run = slot.latest
            if run is not None and run.finished and failed(run):
                return True
    return False


def kubelet_phase(
    spec: wire.PodSpec, init: list[wire.ContainerStatus], main: list[wire.ContainerStatus]
) -> wire.PodPhase:
    """The kubelet's getPhase, over computed container statuses."""
    by_name = {s.name: s for s in [*init, *main]}
    pending_regular = pending_restartable = failed_init = 0
    unknown = running = waiting = stopped = succeeded = 0
    for c in spec.initContainers:
        st = by_name.get(c.name)
        if c.restartPolicy == "Always":
            if st is None:
                unknown += 1
            elif st.state.running is not None:
                if not st.started:
                    pending_restartable += 1
                running += 1
            elif st.state.terminated is not None:
                pass
            elif st.state.waiting is not None:
                if st.lastState.terminated is None:
                    pending_restartable += 1
            else:
                pending_restartable += 1
            continue
        if st is None:
            pending_regular += 1
        elif st.state.running is not None:
            pending_regular += 1
        elif st.state.terminated is not None:
            if st.state.terminated.exitCode != 0:
                failed_init += 1
        elif st.state.waiting is not None:
            if st.lastState.terminated is not None:
                if st.lastState.terminated.exitCode != 0:
                    failed_init += 1
            else:
                pending_regular += 1
        else:
            pending_regular += 1
    for c in spec.containers:
        st = by_name.get(c.name)
        if st is None:
            unknown += 1
        elif st.state.running is not None:
            running += 1
        elif st.state.terminated is not None:
            stopped += 1
            if st.state.terminated.exitCode == 0:
                succeeded += 1
        elif st.state.waiting is not None:
            if st.lastState.terminated is not None:
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    if failed_init > 0 and spec.restartPolicy == "Never":
        return "Failed"
    if pending_regular > 0 or pending_restartable > 0:
        return "Pending"
    if waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running == 0 and stopped > 0 and unknown == 0:
        if spec.restartPolicy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if spec.restartPolicy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _latest_finish(pod: PodState) -> datetime | None:
    ends = [r.finished_at for s in pod.slots.values() for r in s.runs.values() if r.finished_at is not None]
    return max(ends) if ends else None


def deadline(pod: PodState) -> datetime | None:
    """When activeDeadlineSeconds runs out (None: no deadline)."""
    seconds = pod.spec.activeDeadlineSeconds
    return pod.created + timedelta(seconds=seconds) if seconds else None


def pod_failure(pod: PodState, now: datetime) -> tuple[str, str] | None:
    """A pod-level failure the containers alone do not show: (reason, message)."""
    if pod.deleting:
        return None
    if pod.refused is not None:
        return REFUSED, pod.refused
    limit = deadline(pod)
    if limit is not None and now >= limit:
        end = _latest_finish(pod)
        finished_in_time = main_done(pod) and end is not None and end <= limit
        if not finished_in_time:
            return DEADLINE_EXCEEDED, "Pod was active on the node longer than the specified deadline"
    if pod.infra_id is not None and pod.infra is not None and pod.infra.started_at is not None and not pod.infra.running:
        end = _latest_finish(pod)
        infra_end = pod.infra.finished_at
        stopped_after_pod = (
            (main_done(pod) or init_failed(pod))
            and (end is None or (infra_end is not None and end <= infra_end))
        )
        if not stopped_after_pod:
            return SANDBOX_DIED, (
                "the pod's infra container stopped (was the Docker engine restarted, or the container "
                "killed?); its network and volumes are gone, so the pod cannot continue: delete it "
                "(a controller recreates it)"
            )
    if pod.infra_id is not None and pod.infra is None:
        return SANDBOX_DIED, "the pod's infra container was removed from Docker; delete the pod"
    return None


def may_run(pod: PodState) -> bool:
    """Some container of the pod runs, or was started or stopped since it was last inspected:
    the kubelet's "could have running containers"."""
    return any(r.running or r.id in pod.stale for r in pod.runs())


def compute(pod: PodState, now: datetime, settings: RestartSettings) -> wire.PodStatus:
    """The pod's status (without a version). A pod-level failure (a deadline, a dead sandbox)
    makes the phase Failed only once none of its containers may run: as the kubelet's status
    manager holds a terminal phase back until the pod's containers are stopped, so that no one
    reads Failed beside a container still running (one that started late, on a loaded machine,
    is stopped first)."""
    init = [container_status(pod, s, now, settings) for s in pod.slots.values() if s.role == "init"]
    main = [container_status(pod, s, now, settings) for s in pod.slots.values() if s.role == "main"]
    failure = pod_failure(pod, now)
    reason = message = None
    if failure is not None and not may_run(pod):
        phase: wire.PodPhase = "Failed"
        reason, message = failure
    else:
        phase = kubelet_phase(pod.spec, init, main)
    ip = pod.infra.ip if pod.infra is not None and pod.infra.running and pod.infra.ip else pod.last_ip
    return wire.PodStatus(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        phase=phase,
        reason=reason,
        message=message,
        podIP=ip,
        startTime=pod.created,
        initContainerStatuses=init,
        containerStatuses=main,
        events=list(pod.pod_events.values()),
    )


def terminal(status: wire.PodStatus) -> bool:
    return status.phase in ("Succeeded", "Failed")


def all_succeeded(st: wire.PodStatus) -> bool:
    """Every main container terminated with exit code 0."""
    for c in st.containerStatuses:
        term = c.state.terminated
        if term is None or term.exitCode != 0:
            return False
    return True


def final_phase(st: wire.PodStatus) -> wire.PodPhase:
    """The phase of a pod whose containers were all stopped (deleted, or finished while being
    deleted): Succeeded when every container exited 0, else Failed."""
    return "Succeeded" if all_succeeded(st) else "Failed"


__all__ = [
    "all_succeeded",
    "compute",
    "container_status",
    "deadline",
    "final_phase",
    "init_failed",
    "kubelet_phase",
    "main_done",
    "may_run",
    "pod_failure",
    "restart_delay",
    "restart_due",
    "restart_wanted",
    "terminal",
]
