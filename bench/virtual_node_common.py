"""Shared parts of the virtual-node benchmarks (bench/virtual_node_*.py).

Each benchmark runs against a private desktop stack of its own (`<node>-bench`, its own ports,
directory and sidecar name, so nothing of the desktop's own node or of other test runs is touched
or counted), on the local cluster, and removes what it created. It watches pods through the API
(with the clock of this machine: the API server, Docker and the benchmark share it) and reads the
Docker engine's own events for the engine's part. Results are written with `bench.results.Run`
(stamped with date, commit and load average).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from kod import errors, labels  # noqa: E402
from kod.kube import KubeClient  # noqa: E402
from kod.kube_config import load_connection  # noqa: E402
from kod.kube_watch import list_and_watch  # noqa: E402
from localenv import desktop_stack, handle  # noqa: E402
from localenv.progress import Progress  # noqa: E402

IMAGE = "kod/testbox:0.1.0"
PAUSE = "kod/pause:3.10"
DOCKER = "http://docker/v1.41"
SIDECAR_LABEL = f"{labels.DOCKER_PREFIX}.sidecar"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    """p50/p95/min/max/mean, rounded to the millisecond."""
    return {k: round(v, 4) for k, v in {
        "p50": pct(values, 0.5), "p95": pct(values, 0.95), "min": min(values), "max": max(values),
        "mean": statistics.fmean(values),
    }.items()}


#: The benchmarks' namespace: the bench node's owner allows it (admission.allow), as a desktop's
#: owner would allow a team's namespace.
BENCH_NAMESPACE = "kod-bench"


def bench_settings() -> desktop_stack.StackSettings:
    return desktop_stack.load_stack_settings().private("bench", port_offset=200, kubelet_port_offset=2,
                                                       max_pods=300, log_level="warning",
                                                       admission_allow=[BENCH_NAMESPACE])


def table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


@dataclass
class PodTimes:
    added: float | None = None
    running: float | None = None
    deleted: float | None = None
    phase: str = ""


@dataclass
class Bench:
    """The private stack, an API client, the pod watch and the Docker events of one benchmark."""

    stack: desktop_stack.Stack
    kube: KubeClient
    namespace: str
    docker: aiohttp.ClientSession
    pods: dict[str, PodTimes] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)
    #: (pod uid, role, action) -> first time seen (unix seconds)
    events: dict[tuple[str, str, str], float] = field(default_factory=dict)
    pods_synced: asyncio.Event = field(default_factory=asyncio.Event)
    docker_connected: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def node(self) -> str:
        return self.stack.node_name

    def pod(self, name: str, command: list[str] | None = None) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"kod.io/bench": "virtual-node"}},
            "spec": {
                "nodeName": self.node,
                "tolerations": [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists"}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                "command": command or ["sleep", "3600"]}],
            },
        }

    async def create(self, body: dict[str, Any]) -> tuple[str, float]:
        """POST the pod; returns its uid and the time it existed, bound to the node."""
        created = await self.kube.create(f"/api/v1/namespaces/{self.namespace}/pods", body)
        return created["metadata"]["uid"], time.time()

    async def delete(self, name: str) -> None:
        await self.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                               {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})

    async def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    # -- inputs ------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        async for ev in list_and_watch(self.kube, f"/api/v1/namespaces/{self.namespace}/pods", timeout_seconds=600):
            now = time.time()
            objs = ev.objects if ev.type == "SYNC" else [ev.object] if ev.object else []
            for obj in objs:
                uid = obj["metadata"]["uid"]
                self.by_name[obj["metadata"]["name"]] = uid
                t = self.pods.setdefault(uid, PodTimes())
                t.added = t.added or now
                t.phase = (obj.get("status") or {}).get("phase", "")
                if t.phase == "Running" and t.running is None:
                    t.running = now
                if ev.type == "DELETED":
                    t.deleted = now
            self.pods_synced.set()
            self._changed.set()

    async def _docker_events(self) -> None:
        params = {"filters": json.dumps({"type": ["container"], "label": [f"{SIDECAR_LABEL}={self.stack.settings.sidecar_name}"]})}
        async with self.docker.get(f"{DOCKER}/events", params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            self.docker_connected.set()
            async for line in resp.content:
                ev = json.loads(line)
                attrs = ev.get("Actor", {}).get("Attributes", {})
                uid = attrs.get(labels.D_POD_UID)
                if not uid:
                    continue
                key = (uid, attrs.get(f"{labels.DOCKER_PREFIX}.role", ""), ev.get("Action", ""))
                self.events.setdefault(key, ev["timeNano"] / 1e9)
                self._changed.set()

    def engine_times(self, uid: str) -> tuple[float, float]:
        """(the engine's create-to-start of the pod's main container, its span from the first
        create of the pod to the main container's start)."""
        ev = self.events
        main = ev[(uid, "main", "start")] - ev[(uid, "main", "create")]
        span = ev[(uid, "main", "start")] - min(ev[(uid, "infra", "create")], ev[(uid, "main", "create")])
        return main, span

    def pid(self, name: str) -> int | None:
        return desktop_stack.pid(name, self.stack)


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class running_bench:
    """`async with running_bench() as b:` — the private stack up, a namespace, the watches."""

    def __init__(self, *, keep_stack: bool = False) -> None:
        self.keep_stack = keep_stack
        self.settings = bench_settings()
        self.bench: Bench | None = None

    async def __aenter__(self) -> Bench:
        cluster = handle.local()
        stack = await asyncio.to_thread(desktop_stack.up, Progress(quiet=True), cluster=cluster, settings=self.settings)
        kube = KubeClient(load_connection(cluster.kubeconfig), backoff=(0.1, 0.5, 1.0))
        ns = BENCH_NAMESPACE
        try:
            await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        except errors.Conflict:
            pass  # an earlier run's: its pods were deleted at its end
        docker = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path="/var/run/docker.sock"))
        b = Bench(stack=stack, kube=kube, namespace=ns, docker=docker)
        b._tasks = [asyncio.create_task(b._watch_pods()), asyncio.create_task(b._docker_events())]
        await asyncio.wait_for(asyncio.gather(b.pods_synced.wait(), b.docker_connected.wait()), 30)
        self.bench = b
        return b

    async def __aexit__(self, *exc: object) -> None:
        b = self.bench
        assert b is not None
        for t in b._tasks:
            t.cancel()
        await asyncio.gather(*b._tasks, return_exceptions=True)
        try:
            listing = await b.kube.get(f"/api/v1/namespaces/{b.namespace}/pods", params={"labelSelector": "kod.io/bench"})
            for pod in listing.get("items", []):
                await b.kube.delete(f"/api/v1/namespaces/{b.namespace}/pods/{pod['metadata']['name']}", missing_ok=True)
        except Exception as err:  # noqa: BLE001 - cleanup is best effort; say so
            print(f"note: could not delete the pods of namespace {b.namespace}: {err}")
        # The namespace's pods go through the virtual node (graceful); wait for them before stopping it.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = await b.kube.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={b.node}"})
            if not left.get("items"):
                break
            await asyncio.sleep(1)
        await b.kube.close()
        await b.docker.close()
        if not self.keep_stack:
            await asyncio.to_thread(desktop_stack.down, Progress(quiet=True), cluster=b.stack.cluster, settings=self.settings)
