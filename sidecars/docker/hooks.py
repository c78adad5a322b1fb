"""Lifecycle hooks: postStart and preStop, with exec, httpGet and sleep, as the kubelet runs them.

    error = await run_hook(engine, pod, slot, run, handler, timeout=30)   # None: it succeeded
    ok = await post_start(engine, pod, slot, run)    # after the start; False: the run must be killed
    await pre_stop(engine, pod, slot, run, grace)    # before the stop signal; returns seconds spent

The kubelet's rules (pkg/kubelet/lifecycle/handlers.go, kuberuntime_container.go):
- postStart runs right after the container started; until it returns, the container is not
  reported running (its status says ContainerCreating) and is not probed. When it fails, the
  kubelet records FailedPostStartHook ("PostStartHook failed": no command output goes into the
  event, it could hold secrets) and kills the container (Killing, "FailedPostStartHook"), which
  then restarts as its restartPolicy says.
- preStop runs before the stop signal, inside the grace period: the stop signal then gets what is
  left of it, never less than 2 s (the kubelet's minimum). A failed preStop records
  FailedPreStopHook ("PreStopHook failed"); the stop goes on regardless. A kill with no grace
  period (grace 0) runs no preStop.
- exec runs the command in the container (Docker exec; its exit status decides); httpGet sends a
  GET to the pod's address (any HTTP answer is success; only failing to get one is a failure);
  sleep waits; tcpSocket is accepted by the API and does nothing.

Unlike the kubelet, an httpGet hook is sent from inside the pod's own network namespace
(`netns.py`): its `host` reaches what the pod could reach (127.0.0.1 is the pod's loopback), never
the desktop's own services.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kod import errors, wire
from kod.log import get_logger, pod_context
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.netns import SANDBOXES
from sidecars.docker.probes import USER_AGENT, dial_error, go_quote, http_get, resolve_port
from sidecars.docker.state import PodState, Run, Slot

log = get_logger(__name__)

#: The kubelet's minimum grace period for the stop signal after a preStop hook.
MINIMUM_GRACE_SECONDS = 2


def pod_full_name(pod: PodState) -> str:
    return f"{pod.name}_{pod.namespace}({pod.uid})"


async def _exec(engine: Engine, pod: PodState, slot: Slot, run: Run, action: dict[str, Any], timeout: float | None) -> str | None:
    command = [str(a) for a in action.get("command") or []]
    desc = f"Exec lifecycle hook ({command}) for Container {go_quote(slot.name)} in Pod {go_quote(pod_full_name(pod))}"
    if not command:
        return f"{desc} failed - error: no command"
    try:
        code, output = await engine.exec_run(run.id, command, timeout=timeout if timeout is not None else 24 * 3600.0)
    except TimeoutError:
        return f"{desc} failed - error: command {go_quote(' '.join(command))} timed out"
    except EngineError as exc:
        return f"{desc} failed - error: {exc.message}"
    if code != 0:
        text = output.decode("utf-8", "replace")
        return f"{desc} failed - error: command {go_quote(' '.join(command))} exited with {code}: {text}, message: {go_quote(text)}"
    return None


async def _http(engine: Engine, pod: PodState, slot: Slot, action: dict[str, Any], timeout: float | None) -> str | None:
    host = str(action.get("host") or (pod.infra.ip if pod.infra is not None and pod.infra.ip else pod.last_ip) or "")
    port = resolve_port(action.get("port") or 80, slot.spec)
    path = str(action.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    scheme = str(action.get("scheme") or "HTTP").lower()
    desc = f"HTTP lifecycle hook ({path}) for Container {go_quote(slot.name)} in Pod {go_quote(pod_full_name(pod))}"
    if not host or port is None:
        return f"{desc} failed - error: no address to send it to"
    url = f"{scheme}://{host}:{port}{path}"
    headers = {"User-Agent": USER_AGENT}
    for h in action.get("httpHeaders") or []:
        if isinstance(h, dict) and h.get("name"):
            headers[str(h["name"])] = str(h.get("value") or "")
    try:
        # From the pod's own namespace: `host` reaches what the pod could, never the desktop's loopback.
        sandbox = await SANDBOXES.of(engine, pod)
        # Any answer is success: the kubelet's HTTP hook fails only when it gets none.
        await http_get(url, headers, timeout if timeout is not None else 24 * 3600.0, dial=sandbox.connect)
    except errors.KodError as exc:
        return f'{desc} failed - error: Get "{url}": {exc}'
    except TimeoutError:
        return f'{desc} failed - error: Get "{url}": context deadline exceeded'
    except OSError as exc:
        return f'{desc} failed - error: Get "{url}": {dial_error(host, port, exc)}'
    except ValueError as exc:
        return f'{desc} failed - error: Get "{url}": {exc}'
    return None


async def run_hook(
    engine: Engine, pod: PodState, slot: Slot, run: Run, handler: wire.LifecycleHandler, *, timeout: float | None
) -> str | None:
    """Run one hook handler against `run`; None when it succeeded, else why it failed (the
    kubelet's wording). `timeout` bounds exec and httpGet (None: no bound but cancellation)."""
    if handler.exec is not None:
        return await _exec(engine, pod, slot, run, handler.exec, timeout)
    if handler.httpGet is not None:
        return await _http(engine, pod, slot, handler.httpGet, timeout)
    if handler.sleep is not None:
        seconds = float(handler.sleep.get("seconds") or 0)
        await asyncio.sleep(seconds if timeout is None else min(seconds, timeout))
        return None
    return None  # tcpSocket, or nothing: the kubelet does nothing either


async def post_start(engine: Engine, pod: PodState, slot: Slot, run: Run) -> bool:
    """Run the container's postStart hook (if any); False when it failed (FailedPostStartHook
    recorded; the caller kills the run)."""
    handler = slot.spec.lifecycle.postStart if slot.spec.lifecycle is not None else None
    if handler is None:
        return True
    error = await run_hook(engine, pod, slot, run, handler, timeout=None)
    if error is None:
        return True
    log.info("postStart hook failed", error=error, **pod_context(pod.namespace, pod.name, pod.uid, container=slot.name))
    pod.note("Warning", "FailedPostStartHook", "PostStartHook failed")
    return False


async def pre_stop(engine: Engine, pod: PodState, slot: Slot, run: Run, grace: int) -> float:
    """Run the container's preStop hook (if any and `grace` > 0) within `grace` seconds; the
    seconds it took."""
    handler = slot.spec.lifecycle.preStop if slot.spec.lifecycle is not None else None
    if handler is None or grace <= 0:
        return 0.0
    loop = asyncio.get_running_loop()
    begun = loop.time()
    try:
        error = await asyncio.wait_for(run_hook(engine, pod, slot, run, handler, timeout=grace), grace)
    except TimeoutError:
        error = f"preStop hook for Container {go_quote(slot.name)} did not complete within {grace}s"
    if error is not None:
        log.info("preStop hook failed", error=error, **pod_context(pod.namespace, pod.name, pod.uid, container=slot.name))
        pod.note("Warning", "FailedPreStopHook", "PreStopHook failed")
    return loop.time() - begun


def remaining_grace(grace: int, spent: float) -> int:
    """What the stop signal gets after a preStop hook took `spent` of `grace` seconds."""
    return max(grace - int(spent), MINIMUM_GRACE_SECONDS) if grace > 0 else 0
