"""How a pod's containers are stopped: one sequence for a delete, a pod that failed (deadline,
sandbox died) and a pod whose work is done.

    runs = await stop_containers(engine, pod, grace)   # returns once they all stopped
    await stop_infra(engine, pod)                       # a finished pod: drops its tmpfs

Contracts: `stop_containers` gives every running container of the pod its stop signal (the
image's STOPSIGNAL, else SIGTERM) and SIGKILL after `grace` seconds, or SIGKILL at once when
`grace` is 0; it returns when they have all stopped (up to `grace` seconds) with the runs it
stopped, each marked stale so that the next refresh inspects how it ended. Containers created
but never started are left alone (a stop would not change them). The infra container is never
touched by it: a finished pod stops it last (`stop_infra`), a delete removes it. Neither
function takes the pod's lock: callers hold it (or, for a delete's shortened grace period, race
on purpose with the stop that holds it).
"""

from __future__ import annotations

import asyncio

from sidecars.docker.engine import Engine
from sidecars.docker.state import PodState, Run


def grace_period(pod: PodState, default: int) -> int:
    """The pod's terminationGracePeriodSeconds, else `default` (the settings')."""
    value = pod.spec.terminationGracePeriodSeconds
    return default if value is None else value


async def stop_containers(engine: Engine, pod: PodState, grace: int) -> list[Run]:
    """Stop every running container of `pod` (see the module's contract); the runs stopped."""
    runs = [r for r in pod.runs() if r.running]
    if grace == 0:
        await asyncio.gather(*(engine.kill_container(r.id) for r in runs))
    else:
        await asyncio.gather(*(engine.stop_container(r.id, grace) for r in runs))
    pod.stale.update(r.id for r in runs)
    return runs


async def stop_infra(engine: Engine, pod: PodState) -> bool:
    """Stop the pod's infra container when it runs (its tmpfs, with the pod's secrets, goes with
    it); True when it was running."""
    if pod.infra is None or not pod.infra.running:
        return False
    await engine.stop_container(pod.infra.id, 0)
    pod.stale.add(pod.infra.id)
    return True
