"""How a pod's containers are stopped: one sequence for a delete, a pod that failed (deadline,
sandbox died) and a pod whose work is done.

    runs = await stop_containers(engine, pod, grace)   # returns once they all stopped
    await stop_infra(engine, pod)                       # a finished pod: drops its tmpfs

Contracts: `stop_containers` runs each running container's preStop hook (`hooks.py`) within
the grace period, then gives it its stop signal (the image's STOPSIGNAL, else SIGTERM) and
SIGKILL after what is left of `grace` seconds (at least 2 after a hook, as the kubelet), or
SIGKILL at once (no hook) when `grace` is 0; `stop_run` does the same for one container (a kill
the kubelet decided: a failed liveness probe or postStart hook); it returns when they have all stopped (up to `grace` seconds) with the runs it
stopped, each marked stale so that the next refresh inspects how it ended. Containers created
but never started are left alone (a stop would not change them). The infra container is never
touched by it: a finished pod stops it last (`stop_infra`), a delete removes it. Neither
function takes the pod's lock: callers hold it (or, for a delete's shortened grace period, race
on purpose with the stop that holds it).
"""

from __future__ import annotations

import asyncio

from sidecars.docker import hooks
from sidecars.docker.engine import Engine
from sidecars.docker.state import PodState, Run, Slot


def grace_period(pod: PodState, default: int) -> int:
    """The pod's terminationGracePeriodSeconds, else `default` (the settings')."""
    value = pod.spec.terminationGracePeriodSeconds
    return default if value is None else value


async def stop_containers(engine: Engine, pod: PodState, grace: int) -> list[Run]:
    """Stop every running container of `pod` (see the module's contract); the runs stopped."""
    pairs = [(s, r) for s in pod.slots.values() for r in s.runs.values() if r.running]
    await asyncio.gather(*(stop_run(engine, pod, s, r, grace) for s, r in pairs))
    return [r for _, r in pairs]


async def stop_run(engine: Engine, pod: PodState, slot: Slot, run: Run, grace: int) -> None:
    """Stop one running container: its preStop hook, then the stop signal with what is left of
    `grace` (SIGKILL at once when 0); the run is marked stale."""
    if grace == 0:
        await engine.kill_container(run.id)
    else:
        spent = await hooks.pre_stop(engine, pod, slot, run, grace)
        await engine.stop_container(run.id, hooks.remaining_grace(grace, spent) if spent else grace)
    pod.stale.add(run.id)


async def stop_infra(engine: Engine, pod: PodState) -> bool:
    """Stop the pod's infra container when it runs (its tmpfs, with the pod's secrets, goes with
    it); True when it was running."""
    if pod.infra is None or not pod.infra.running:
        return False
    await engine.stop_container(pod.infra.id, 0)
    pod.stale.add(pod.infra.id)
    return True
