"""Probes: the startup, liveness and readiness probes of a pod's containers, as the kubelet runs them.

    prober = Prober(engine, kick=worker.kick, alive=table.is_current)
    prober.sync(pod)       # after every round of the pod's worker (cheap when nothing changed)
    prober.forget(pod)     # the pod left the table
    await prober.close()

It mirrors the kubelet's prober (pkg/kubelet/prober/worker.go and prober.go): one worker per probe
of a container, for the pod's life (a restarted container is probed by the same worker); each
ticks every periodSeconds from when it started and on each tick does what `doProbe` does
(`Tracker.decide`, then the probe, then `Tracker.observe`):
- a container not running yet, or within initialDelaySeconds of its start, is not probed;
- until the startup probe succeeded, liveness and readiness are not run (and the container is not
  `started`); once it succeeded, the startup probe is not run again for that container;
- a result counts only after failureThreshold failures / successThreshold successes in a row;
  readiness starts as failure, liveness as success, startup as unknown;
- a liveness or startup failure puts the worker on hold until a new container appears, and asks
  the reconciler to kill the container (`Slot.kill`; the Killing event says
  "Container X failed liveness probe, will be restarted"), which then restarts per restartPolicy;
- every failed probe records an Unhealthy event ("Readiness probe failed: <output>"), aggregated
  with the ones before it; a probe that could not run at all ("probe errored") is not counted.

Where network probes dial from: inside the pod's own network namespace (`netns.py`), never
the desktop's. The pod's address by default, as the kubelet; a probe's `host` means what the pod
itself could reach: 127.0.0.1 is the pod's loopback, and the desktop's addresses go through the
pods' network and its host rules. (The kubelet dials from the node, so `host: 127.0.0.1` would
reach the desktop's own services and the Unhealthy event would carry what they answer.)

Cost: a pod without probes has no worker, no timer, nothing. A worker is one asyncio task that
sleeps on one timer per tick (`loop.call_at`); a probe is one HTTP request or TCP connect, whose
socket is made inside the pod's namespace on the loop's own thread (`netns.py`; the namespace is
looked up in the engine once per sandbox, not per probe), or one Docker exec (exec probes; as the
kubelet does through the runtime). No process runs per probe. Results live in the pod's
`Slot.probe_results` (the results managers) and reach the status (`status.py`: `started`,
`ready`) through a kick of the pod's worker when they change.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from yarl import URL

from kod import errors, wire
from kod.log import get_logger, pod_context
from sidecars.docker import grpc_health
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.netns import SANDBOXES, Dial, Sandboxes
from sidecars.docker.state import PodState, Run, Slot, utcnow

log = get_logger(__name__)

Kind = Literal["startup", "liveness", "readiness"]
KINDS: tuple[Kind, ...] = ("startup", "liveness", "readiness")
#: How the kubelet names each kind in events.
TITLES = {"startup": "Startup", "liveness": "Liveness", "readiness": "Readiness"}

#: The kubelet's defaults (pkg/apis/core/v1/defaults.go).
DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_SUCCESS = 1
DEFAULT_FAILURE = 3
#: The kubelet reads at most this much of a probe's output or an HTTP body (prober's maxReadLength).
MAX_OUTPUT = 10 * 1024
#: The User-Agent of the kubelet's HTTP probes ("kube-probe/<major>.<minor>").
USER_AGENT = "kube-probe/1.35"


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"
    #: The probe could not run (the container is gone meanwhile, the engine refused the exec):
    #: reported, never counted (the kubelet throws such results away).
    ERROR = "error"


class Decision(enum.Enum):
    PROBE = "probe"
    SKIP = "skip"
    #: The worker ends: the container will not run again, or the pod is being deleted.
    STOP = "stop"


@dataclass(frozen=True)
class ProbeSpec:
    """One probe with the kubelet's defaults applied."""

    kind: Kind
    handler: Literal["exec", "httpGet", "tcpSocket", "grpc"]
    action: dict[str, Any]
    initial_delay: int = 0
    period: int = DEFAULT_PERIOD
    timeout: int = DEFAULT_TIMEOUT
    success_threshold: int = DEFAULT_SUCCESS
    failure_threshold: int = DEFAULT_FAILURE
    #: The probe's own terminationGracePeriodSeconds (liveness, startup), for the kill.
    grace: int | None = None

    @classmethod
    def of(cls, kind: Kind, probe: wire.Probe | None) -> ProbeSpec | None:
        """The probe of `kind` (None: the container has none, or one with no handler)."""
        if probe is None:
            return None
        for handler in ("exec", "httpGet", "tcpSocket", "grpc"):
            action = getattr(probe, handler)
            if action is not None:
                break
        else:
            return None
        success = probe.successThreshold or DEFAULT_SUCCESS
        return cls(
            kind=kind,
            handler=handler,  # type: ignore[arg-type]
            action=dict(action),
            initial_delay=max(probe.initialDelaySeconds or 0, 0),
            period=max(probe.periodSeconds or DEFAULT_PERIOD, 1),
            timeout=max(probe.timeoutSeconds or DEFAULT_TIMEOUT, 1),
            # The API allows only 1 for liveness and startup.
            success_threshold=1 if kind != "readiness" else max(success, 1),
            failure_threshold=max(probe.failureThreshold or DEFAULT_FAILURE, 1),
            grace=probe.terminationGracePeriodSeconds,
        )


def specs(container: wire.Container) -> list[ProbeSpec]:
    """The probes of a container, in the order startup, liveness, readiness."""
    found = [
        ProbeSpec.of("startup", container.startupProbe),
        ProbeSpec.of("liveness", container.livenessProbe),
        ProbeSpec.of("readiness", container.readinessProbe),
    ]
    return [s for s in found if s is not None]


def probed(slot: Slot) -> bool:
    """The kubelet probes main containers and restartable init containers (sidecars) only."""
    return slot.role == "main" or slot.restartable


# ------------------------------------------------------------------------------ the results

def started(slot: Slot, run: Run) -> bool:
    """The container's `started`: running, and its startup probe (if any) succeeded."""
    if not run.running or slot.post_start == run.id:
        return False
    if not probed(slot) or ProbeSpec.of("startup", slot.spec.startupProbe) is None:
        return True
    return slot.probe_results.get("startup") == (run.id, True)


def ready(slot: Slot, run: Run) -> bool:
    """The container's `ready`: started, and its readiness probe (if any) succeeded last."""
    if not started(slot, run):
        return False
    if not probed(slot) or ProbeSpec.of("readiness", slot.spec.readinessProbe) is None:
        return True
    return slot.probe_results.get("readiness") == (run.id, True)


@dataclass
class Tracker:
    """The kubelet's worker state for one probe of one container (pure: no clock, no I/O)."""

    spec: ProbeSpec
    container_id: str | None = None
    #: What the results manager holds for `container_id`.
    result: Result | None = None
    last: Result | None = None
    run_length: int = 0
    on_hold: bool = False
    #: Probes counted for the current container.
    probes: int = 0
    #: Probes tried against the current container, counted or not (readiness is triggered at
    #: once for a new one, only until its first try: a probe that keeps erroring must not spin).
    tries: int = 0

    @property
    def initial(self) -> Result:
        return {"readiness": Result.FAILURE, "liveness": Result.SUCCESS, "startup": Result.UNKNOWN}[self.spec.kind]

    def decide(self, run: Run | None, *, is_started: bool, deleting: bool, restart_never: bool, now: datetime) -> Decision:
        """What doProbe does before probing: probe, skip this tick, or stop the worker. Moves
        to a new container (its initial result, off hold) when `run` is one."""
        if run is None:
            return Decision.SKIP
        if run.id != self.container_id:
            self.container_id = run.id
            self.result = self.initial
            self.on_hold = False
            self.last, self.run_length, self.probes, self.tries = None, 0, 0, 0
        if self.on_hold:
            return Decision.SKIP
        if not run.running:
            self.result = Result.FAILURE
            # Abort if the container will not be restarted.
            return Decision.STOP if run.finished and restart_never else Decision.SKIP
        if deleting and self.spec.kind in ("liveness", "startup"):
            self.result = Result.SUCCESS
            return Decision.STOP
        if run.started_at is not None and int((now - run.started_at).total_seconds()) < self.spec.initial_delay:
            return Decision.SKIP
        if is_started:
            if self.spec.kind == "startup":
                return Decision.SKIP
        elif self.spec.kind != "startup":
            return Decision.SKIP
        return Decision.PROBE

    def observe(self, result: Result) -> bool:
        """Count one probe's result; True when the result reported for the container changed.
        A liveness or startup failure puts the worker on hold (until a new container)."""
        if result is Result.ERROR:
            return False
        self.probes += 1
        if result == self.last:
            self.run_length += 1
        else:
            self.last, self.run_length = result, 1
        if (result is Result.FAILURE and self.run_length < self.spec.failure_threshold) or (
            result is Result.SUCCESS and self.run_length < self.spec.success_threshold
        ):
            return False
        changed = self.result is not result
        self.result = result
        if self.spec.kind in ("liveness", "startup") and result is Result.FAILURE:
            self.on_hold = True
            self.run_length = 0
        return changed

    def next_tick(self, started_at: float, now: float) -> float:
        """The first tick after `now` of a ticker started at `started_at` (loop time)."""
        period = float(self.spec.period)
        ticks = int((now - started_at) // period) + 1
        return started_at + ticks * period


# ------------------------------------------------------------------------------ running probes

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """`$(VAR)` in an exec probe's command, from the container's env, as the kubelet expands it
    (`$$` is a literal `$`; an unknown name stays as written)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return [_VAR.sub(one, a) for a in args]


def resolve_port(port: Any, container: wire.Container) -> int | None:
    """A probe's or hook's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port if 0 < port < 65536 else None
    text = str(port)
    if text.isdigit():
        value = int(text)
        return value if 0 < value < 65536 else None
    for p in container.ports:
        if p.name == text:
            return p.containerPort
    return None


def go_quote(text: str) -> str:
    """`text` as Go's %q prints it (what the kubelet's messages quote with)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dial_error(host: str, port: int, exc: BaseException) -> str:
    """A connection error worded as the kubelet's Go dialer words it."""
    where = f"dial tcp {host}:{port}"
    if isinstance(exc, TimeoutError):
        return f"{where}: i/o timeout"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connect: connection refused"
    errno = getattr(exc, "errno", None)
    if errno == 113:
        return f"{where}: connect: no route to host"
    if errno == 101:
        return f"{where}: connect: network is unreachable"
    return f"{where}: {getattr(exc, 'strerror', None) or exc}"


async def tcp_check(host: str, port: int, timeout: float, *, dial: Dial) -> tuple[Result, str]:
    """A tcpSocket probe: success when a connection opens (`dial`: from the pod's namespace)."""
    try:
        sock = await asyncio.wait_for(dial(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return Result.FAILURE, dial_error(host, port, exc)
    sock.close()
    return Result.SUCCESS, ""


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def http_get(url: str, headers: dict[str, str], timeout: float, *, dial: Dial) -> HttpAnswer:
    """One GET on a connection of its own (no keep-alive, as the kubelet's probes and hooks),
    HTTPS without verifying the certificate (as the kubelet); at most `MAX_OUTPUT` of the body.
    `dial` makes the connection (from the pod's namespace). Raises TimeoutError, OSError (the
    connection), ValueError (not HTTP), kod errors (the pod's namespace cannot be used)."""
    target = URL(url)
    host, port = target.raw_host or "", target.port or (443 if target.scheme == "https" else 80)
    context = None
    if target.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(timeout):
        sock = await dial(host, port)
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=host if context is not None else None
            )
        except BaseException:
            sock.close()
            raise
        try:
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            fields = {"Host": hostport, **headers, "Connection": "close"}
            head = f"GET {target.raw_path_qs or '/'} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write(head.encode("latin-1") + b"\r\n")
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ValueError(f"malformed HTTP response {status_line[:64]!r}")
            answer_headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                answer_headers[key.strip().lower()] = value.strip()
            body = b""
            if answer_headers.get("transfer-encoding", "").lower() != "chunked":
                size = answer_headers.get("content-length")
                want = min(int(size), MAX_OUTPUT) if size and size.isdigit() else MAX_OUTPUT
                while len(body) < want:
                    chunk = await reader.read(want - len(body))
                    if not chunk:
                        break
                    body += chunk
            return HttpAnswer(int(parts[1]), answer_headers, body)
        finally:
            writer.close()


async def http_check(action: dict[str, Any], host: str, port: int, timeout: float, *, dial: Dial) -> tuple[Result, str]:
    """An httpGet probe: success for a status in [200, 400), after redirects to the same host
    (a redirect elsewhere counts as success, as the kubelet's does); `dial` as `http_get`'s."""
    scheme = str(action.get("scheme") or "HTTP").lower()
    path = str(action.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    target = str(action.get("host") or host)
    hostport = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
    url = f"{scheme}://{hostport}{path}"
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    for h in action.get("httpHeaders") or []:
        if isinstance(h, dict) and h.get("name"):
            headers[str(h["name"])] = str(h.get("value") or "")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = url
    try:
        for _ in range(10):
            answer = await http_get(current, headers, max(deadline - loop.time(), 0.001), dial=dial)
            location = answer.headers.get("location")
            if answer.status in (301, 302, 303, 307, 308) and location:
                nxt = URL(current).join(URL(location))
                if nxt.host != URL(current).host:
                    return Result.SUCCESS, f"Probe terminated redirects, Response body: {answer.body.decode('utf-8', 'replace')}"
                current = str(nxt)
                continue
            if 200 <= answer.status < 400:
                return Result.SUCCESS, answer.body.decode("utf-8", "replace")
            return Result.FAILURE, f"HTTP probe failed with statuscode: {answer.status}"
        return Result.FAILURE, f'Get "{current}": stopped after 10 redirects'
    except TimeoutError:
        return Result.FAILURE, f'Get "{current}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except OSError as exc:
        return Result.FAILURE, f'Get "{current}": {dial_error(URL(current).host or target, URL(current).port or port, exc)}'
    except ValueError as exc:
        return Result.FAILURE, f'Get "{current}": {exc}'


async def exec_check(engine: Engine, run: Run, command: list[str], timeout: float) -> tuple[Result, str]:
    """An exec probe: the command's exit status in the container (Docker exec)."""
    try:
        code, output = await engine.exec_run(run.id, command, timeout=timeout)
    except TimeoutError:
        # The kubelet's words (kubelet 1.35, seen on a real node).
        return Result.FAILURE, f"command timed out: {go_quote(' '.join(command))} timed out after {timeout:g}s"
    except EngineError as exc:
        return Result.ERROR, exc.message
    text = output[:MAX_OUTPUT].decode("utf-8", "replace")
    return (Result.SUCCESS if code == 0 else Result.FAILURE), text


# ------------------------------------------------------------------------------ the driver


class Prober:
    """Runs the probes of every pod (one worker task per probe of a container, while the pod
    is in the table)."""

    def __init__(
        self,
        engine: Engine,
        *,
        kick: Callable[[PodState], None],
        alive: Callable[[PodState], bool],
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] | None = None,
        sleep_until: Callable[[float], Awaitable[None]] | None = None,
        sandboxes: Sandboxes = SANDBOXES,
    ) -> None:
        """`clock` (the time containers started are compared with), `monotonic` and
        `sleep_until` (the ticks: the loop's time and a timer by default) are for tests;
        `sandboxes`: the pods' network namespaces, which network probes dial from."""
        self.engine = engine
        self.sandboxes = sandboxes
        self._kick = kick
        self._alive = alive
        self._clock = clock
        self._monotonic = monotonic
        self._sleep_until = sleep_until
        #: pod uid -> (container, kind) -> (tracker, its task, its trigger)
        self._workers: dict[str, dict[tuple[str, Kind], tuple[Tracker, asyncio.Task[None], asyncio.Event]]] = {}

    # -- wiring -------------------------------------------------------------------------------

    def sync(self, pod: PodState) -> None:
        """Start the workers of the pod's probes that do not run yet (the first time a
        container with probes is seen), and trigger readiness of containers that just became
        `started` (the kubelet probes readiness at once then). Cheap: no I/O."""
        if pod.deleting and pod.uid not in self._workers:
            return
        workers = self._workers.get(pod.uid)
        for slot in pod.slots.values():
            if not probed(slot):
                continue
            for spec in specs(slot.spec):
                key = (slot.name, spec.kind)
                if workers is not None and key in workers:
                    tracker, task, trigger = workers[key]
                    run = slot.latest
                    if (
                        spec.kind == "readiness" and run is not None and run.running and not task.done()
                        and (tracker.container_id != run.id or tracker.tries == 0) and started(slot, run)
                    ):
                        trigger.set()
                    continue
                if pod.deleting or slot.latest is None:
                    continue
                workers = self._workers.setdefault(pod.uid, {})
                tracker = Tracker(spec)
                trigger = asyncio.Event()
                task = asyncio.create_task(self._work(pod, slot, tracker, trigger), name=f"probe-{pod.uid}-{slot.name}-{spec.kind}")
                workers[key] = (tracker, task, trigger)

    def forget(self, pod: PodState) -> None:
        """Stop every worker of the pod (it left the table) and let go of its namespace."""
        for _, task, _ in (self._workers.pop(pod.uid, None) or {}).values():
            task.cancel()
        self.sandboxes.forget(pod.infra_id)

    def workers(self, pod: PodState) -> int:
        """How many probe workers the pod has running (for tests and diagnostics)."""
        return sum(1 for _, t, _ in (self._workers.get(pod.uid) or {}).values() if not t.done())

    async def close(self) -> None:
        tasks = [t for ws in self._workers.values() for _, t, _ in ws.values()]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one worker ---------------------------------------------------------------------------

    def _now(self) -> float:
        return self._monotonic() if self._monotonic is not None else asyncio.get_running_loop().time()

    async def _sleep(self, when: float, trigger: asyncio.Event) -> None:
        """Until tick time `when`, or until the worker is triggered (readiness, at once)."""
        if self._sleep_until is not None:
            sleeper = asyncio.ensure_future(self._sleep_until(when))
            waiter = asyncio.ensure_future(trigger.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()
            return
        loop = asyncio.get_running_loop()
        handle = loop.call_at(when, trigger.set)
        try:
            await trigger.wait()
        finally:
            handle.cancel()

    async def _work(self, pod: PodState, slot: Slot, tracker: Tracker, trigger: asyncio.Event) -> None:
        ctx = pod_context(pod.namespace, pod.name, pod.uid, container=slot.name, probe=tracker.spec.kind)
        begun = self._now()
        try:
            while self._alive(pod):
                trigger.clear()
                run = slot.latest
                decision = tracker.decide(
                    run,
                    is_started=run is not None and started(slot, run),
                    deleting=pod.deleting,
                    restart_never=pod.spec.restartPolicy == "Never",
                    now=self._clock(),
                )
                self._publish(pod, slot, tracker)
                if decision is Decision.STOP:
                    return
                if decision is Decision.PROBE and run is not None:
                    await self._probe(pod, slot, run, tracker)
                await self._sleep(tracker.next_tick(begun, self._now()), trigger)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("probe worker failed", **ctx)
        finally:
            workers = self._workers.get(pod.uid)
            key = (slot.name, tracker.spec.kind)
            # A worker that stopped stays listed (so that `sync` starts no other) while the pod lives.
            if not self._alive(pod) and workers is not None and key in workers and workers[key][0] is tracker:
                del workers[key]
                if not workers:
                    del self._workers[pod.uid]

    def _publish(self, pod: PodState, slot: Slot, tracker: Tracker) -> None:
        """Write the tracker's result into the slot (the results manager); kick when it changed."""
        if tracker.container_id is None or tracker.result is None:
            return
        value = (tracker.container_id, tracker.result is Result.SUCCESS)
        kind = tracker.spec.kind
        if slot.probe_results.get(kind) != value:
            slot.probe_results[kind] = value
            self._kick(pod)

    async def _probe(self, pod: PodState, slot: Slot, run: Run, tracker: Tracker) -> None:
        spec = tracker.spec
        tracker.tries += 1
        result, output = await self.check(pod, slot, run, spec)
        if not self._alive(pod) or slot.latest is not run:
            return  # the pod or the container went away meanwhile: the result is about nothing
        title = TITLES[spec.kind]
        if result is Result.ERROR:
            pod.note("Warning", "Unhealthy", f"{title} probe errored: {output}")
            self._kick(pod)
        elif result is not Result.SUCCESS:
            pod.note("Warning", "Unhealthy", f"{title} probe failed: {output}")
            self._kick(pod)
        if tracker.observe(result):
            self._publish(pod, slot, tracker)
            if spec.kind == "startup" and result is Result.SUCCESS:
                self._trigger(pod, slot.name, "readiness")
        if tracker.on_hold and result is Result.FAILURE:
            log.info("container failed its probe; killing it", **pod_context(
                pod.namespace, pod.name, pod.uid, container=slot.name, probe=spec.kind))
            slot.kill = (run.id, f"Container {slot.name} failed {spec.kind} probe, will be restarted", spec.grace)
            self._kick(pod)

    def _trigger(self, pod: PodState, container: str, kind: Kind) -> None:
        entry = (self._workers.get(pod.uid) or {}).get((container, kind))
        if entry is not None:
            entry[2].set()

    async def check(self, pod: PodState, slot: Slot, run: Run, spec: ProbeSpec) -> tuple[Result, str]:
        """Run one probe against `run` (no counting): (result, output or reason)."""
        action = spec.action
        if spec.handler == "exec":
            resolved = pod.record.resolved(slot.name)
            env = {e.name: e.value for e in resolved.env} if resolved is not None else {}
            command = expand([str(a) for a in action.get("command") or []], env)
            if not command:
                return Result.ERROR, "exec probe has no command"
            return await exec_check(self.engine, run, command, spec.timeout)
        host = pod.infra.ip if pod.infra is not None and pod.infra.ip else pod.last_ip
        port = resolve_port(action.get("port"), slot.spec)
        if port is None:
            return Result.ERROR, f"unable to resolve port {action.get('port')!r} of container {slot.name}"
        target = str(action.get("host") or host or "") if spec.handler != "grpc" else str(host or "")
        if not target:
            return Result.ERROR, "the pod has no address"
        try:
            # From the pod's own namespace: `host` reaches what the pod could, never the desktop's loopback.
            sandbox = await self.sandboxes.of(self.engine, pod)
            if spec.handler == "grpc":
                ok, message = await grpc_health.check(target, port, str(action.get("service") or ""), spec.timeout,
                                                      dial=sandbox.connect)
                return (Result.SUCCESS if ok else Result.FAILURE), message
            if spec.handler == "tcpSocket":
                return await tcp_check(target, port, spec.timeout, dial=sandbox.connect)
            return await http_check(action, target, port, spec.timeout, dial=sandbox.connect)
        except errors.KodError as exc:
            # The namespace could not be used (the sandbox stopped, it is not the pod's any
            # more): the probe did not run, so it is not counted.
            return Result.ERROR, str(exc)
