"""What the Docker sidecar adds on top of the Docker engine, measured against the engine itself.

    .venv/bin/python bench/sidecar_overhead.py [--sequential 20] [--burst 50] [--deletes 20] [--idle-pods 200]
                                               [--baseline GIT_REF]

Starts `kod-docker-sidecar` as a process (a unix socket in a temporary directory and a sidecar name
of its own, so nothing else in Docker is touched), and measures, through its HTTP API and its
pushed status (the watch stream), with `kod/testbox` pods running `sleep`:

- sequential: one pod at a time, from POST /v1/pods until the watch reports the container
  running. From the engine's own events it subtracts the engine's create-to-start time of the
  pod's container (the issue's definition: "overhead vs container"; note that the sidecar creates
  the container while the engine starts the infra container, so this interval includes part of
  the infra start), and the engine's busy span for the whole pod, from the first create to the
  last start ("overhead vs engine": what the sidecar itself adds). p50/p95 and the raw latency.
- burst: --burst pods created at once until all are reported running, against the same number of
  containers created and started at once directly through the Engine API (`docker run -d`);
  ratio = sidecar time / engine time (the issue's target: <= 1.5), three rounds, alternating; the
  median of the rounds' ratios is reported.
- delete: DELETE with gracePeriodSeconds=0 of running pods, one at a time, until the answer
  (containers and volumes removed): p50/p95.
- idle: --idle-pods pods running, the sidecar's resident memory and the CPU time it uses in 20 s
  of idleness (no polling: next to nothing).

--baseline GIT_REF: the same measurements, in the same run, of the sidecar of another commit (a
detached git worktree of it in a temporary directory, started the same way): one pod on each in
turn (alternating which goes first), each burst round on both, so that both see the same machine.
The result then has a `baseline` part and `compare` (this tree's numbers over the baseline's).
The idle part runs for this tree only.

Prints the numbers and writes them to bench/results/sidecar_overhead.json, stamped with date,
commit and load average. The file holds only the parts this run measured (run one part with e.g.
--sequential 0 --burst 0 --deletes 0; the others are then absent, not carried over).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from kod.http import ApiClient  # noqa: E402
from kod.wire import PodCreateRequest, PodStatus, WatchEvent  # noqa: E402
from bench.results import Run  # noqa: E402
from sidecars.docker import network  # noqa: E402

IMAGE = "kod/testbox:0.1.0"
PAUSE = "kod/pause:3.10"
DOCKER = "http://docker/v1.41"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 4)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "mean": round(statistics.fmean(values), 4)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    """One sidecar under measurement: started from the source tree `root` (this checkout, or a
    baseline's worktree)."""

    def __init__(self, workdir: Path, root: Path = ROOT) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.name = f"bench-{uuid.uuid4().hex[:6]}"
        self.ns = self.name
        self.workdir = workdir
        self.socket = workdir / "sidecar.sock"
        self.token_file = workdir / "token"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api: ApiClient | None = None
        self.statuses: dict[str, PodStatus] = {}
        self.changed = asyncio.Event()
        self.events: dict[tuple[str, str, str], float] = {}  # (uid, role, action) -> unix time
        self.docker = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path="/var/run/docker.sock"))
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        env = {**os.environ, "KOD_SIDECAR_INFRA_IMAGE": PAUSE, "XDG_CONFIG_HOME": str(self.workdir)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecars.docker", "--socket", str(self.socket), "--name", self.name,
             "--token-file", str(self.token_file), "--log-level", "warning"],
            cwd=self.root, env=env, stdout=open(self.workdir / "sidecar.log", "wb"), stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            if self.socket.exists() and self.token_file.exists():
                break
            await asyncio.sleep(0.1)
        self.api = ApiClient(f"unix://{self.socket}", self.token_file.read_text().strip(), timeout=120)
        await self.api.request("GET", "/v1/pods")  # waits for the first sync
        self._tasks.append(asyncio.create_task(self._watch()))
        self._tasks.append(asyncio.create_task(self._docker_events()))

    async def _watch(self) -> None:
        assert self.api is not None
        async for line in self.api.lines("/v1/watch"):
            ev = WatchEvent.model_validate_json(line)
            for st in [*(ev.pods or []), *([ev.pod] if ev.pod else [])]:
                if ev.type == "DELETED":
                    self.statuses.pop(st.name, None)
                else:
                    self.statuses[st.name] = st
            self.changed.set()

    async def _docker_events(self) -> None:
        params = {"filters": json.dumps({"type": ["container"], "label": [f"io.kod.sidecar={self.name}"],
                                         "event": ["create", "start"]})}
        async with self.docker.get(f"{DOCKER}/events", params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for line in resp.content:
                ev = json.loads(line)
                attrs = ev["Actor"]["Attributes"]
                key = (attrs.get("io.kod.pod.uid", ""), attrs.get("io.kod.role", ""), ev["Action"])
                self.events[key] = ev["timeNano"] / 1e9

    async def wait(self, cond: Any, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self.changed.clear()
            if cond():
                return
            await asyncio.wait_for(self.changed.wait(), max(0.1, deadline - time.monotonic()))

    def running(self, name: str) -> bool:
        st = self.statuses.get(name)
        return bool(st and st.containerStatuses and st.containerStatuses[0].state.running is not None)

    def request(self, name: str) -> PodCreateRequest:
        return PodCreateRequest.model_validate({
            "pod": {"metadata": {"name": name, "namespace": self.ns, "uid": str(uuid.uuid4())},
                    "spec": {"restartPolicy": "Always",
                             "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}]}},
        })

    async def create(self, req: PodCreateRequest) -> None:
        assert self.api is not None
        # Fields at their defaults are left out, so that a baseline older than the wire format's
        # newest fields (its models forbid unknown ones) gets a request it accepts; both sides get
        # the same bytes.
        data = req.model_dump_json(exclude_none=True, exclude_defaults=True, by_alias=True).encode()
        await self.api.request("POST", "/v1/pods", data=data, model=PodStatus)

    async def delete(self, name: str) -> None:
        assert self.api is not None
        await self.api.request("DELETE", f"/v1/pods/{self.ns}/{name}", params={"gracePeriodSeconds": 0}, model=PodStatus)

    async def delete_all(self) -> None:
        names = list(self.statuses)
        sem = asyncio.Semaphore(8)

        async def one(n: str) -> None:
            async with sem:
                await self.delete(n)

        await asyncio.gather(*(one(n) for n in names))

    # ---- the engine alone -----------------------------------------------------------------------

    async def engine(self, method: str, path: str, body: Any = None) -> Any:
        async with self.docker.request(method, DOCKER + path, json=body) as resp:
            data = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
            return json.loads(data) if data else None

    async def docker_run_burst(self, n: int) -> float:
        labels = {"io.kod.sidecar": self.name, "io.kod.bench": "direct"}

        async def run(i: int) -> str:
            c = await self.engine("POST", f"/containers/create?name={self.name}-direct-{uuid.uuid4().hex[:6]}",
                                  {"Image": IMAGE, "Cmd": ["sleep", "3600"], "Labels": labels})
            await self.engine("POST", f"/containers/{c['Id']}/start")
            return str(c["Id"])

        t0 = time.monotonic()
        ids = await asyncio.gather(*(run(i) for i in range(n)))
        elapsed = time.monotonic() - t0
        await asyncio.gather(*(self.engine("DELETE", f"/containers/{i}?force=1") for i in ids))
        return elapsed

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.api is not None:
            await self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        flt = json.dumps({"label": [f"io.kod.sidecar={self.name}"]})
        for c in await self.engine("GET", f"/containers/json?all=1&filters={flt}"):
            await self.engine("DELETE", f"/containers/{c['Id']}?force=1")
        vols = await self.engine("GET", f"/volumes?filters={flt}")
        for v in vols.get("Volumes") or []:
            await self.engine("DELETE", f"/volumes/{v['Name']}")
        # The pods' network it made, and its host rules (Docker has about thirty address pools).
        for n in await self.engine("GET", f"/networks?filters={flt}"):
            try:
                await self.engine("DELETE", f"/networks/{n['Id']}")
            except RuntimeError as exc:
                # Docker 20.10 can keep a stale endpoint of a force-removed container (it clears on
                # the engine's restart): the numbers are still good, so say it and go on.
                print(f"warning: could not remove the network {n['Name']}: {exc}", file=sys.stderr, flush=True)
            bridge = (n.get("Options") or {}).get("com.docker.network.bridge.name")
            if bridge:
                network.remove_host_rules(n["Name"], bridge)
        await self.docker.close()


async def one_pod(b: Bench, name: str) -> tuple[float, float, float, float]:
    """One pod from POST until reported running: (latency, create answer, overhead vs the
    container's own create-to-start, overhead vs the engine's busy span for the pod)."""
    req = b.request(name)
    uid = req.pod.metadata.uid
    t0 = time.time()
    await b.create(req)
    answered = time.time() - t0
    await b.wait(lambda: b.running(name))
    raw = time.time() - t0
    await b.wait(lambda: (uid, "main", "start") in b.events, 10)
    ev = b.events
    main_engine = ev[(uid, "main", "start")] - ev[(uid, "main", "create")]
    # The engine's busy span for the whole pod: first create to last start (the sidecar
    # overlaps the container's create with the infra container's start).
    engine_span = max(ev[(uid, r, "start")] for r in ("infra", "main")) - min(ev[(uid, r, "create")] for r in ("infra", "main"))
    return raw, answered, raw - main_engine, raw - engine_span


async def sequential(benches: list[Bench], n: int) -> list[dict[str, Any]]:
    """n pods one at a time on each sidecar, in turn (which one goes first alternates)."""
    got: list[list[tuple[float, float, float, float]]] = [[] for _ in benches]
    for i in range(n):
        order = list(enumerate(benches))
        for k, b in order if i % 2 == 0 else reversed(order):
            got[k].append(await one_pod(b, f"seq-{i:03d}"))
    for b in benches:
        await b.delete_all()
    results = []
    for samples in got:
        raw, answered, vs_container, vs_engine = (list(x) for x in zip(*samples, strict=True))
        results.append({"pods": n, "raw_latency_s": summary(raw), "create_answer_s": summary(answered),
                        "overhead_vs_container_s": summary(vs_container), "overhead_vs_engine_s": summary(vs_engine)})
    return results


async def burst(benches: list[Bench], n: int, rounds: int = 3) -> list[dict[str, Any]]:
    """Rounds of (the engine alone, then each sidecar) for n pods; the ratio of each round, and
    their median (the rounds share the machine's noise pairwise; no best round is picked)."""
    sidecar_times: list[list[float]] = [[] for _ in benches]
    engine_times = []
    for r in range(rounds):
        engine_times.append(await benches[0].docker_run_burst(n))
        order = list(enumerate(benches))
        for k, b in order if r % 2 == 0 else reversed(order):
            reqs = [b.request(f"burst-{r}-{i:03d}") for i in range(n)]
            t0 = time.monotonic()
            await asyncio.gather(*(b.create(q) for q in reqs))
            await b.wait(lambda b=b, reqs=reqs: all(b.running(q.pod.metadata.name) for q in reqs))
            sidecar_times[k].append(time.monotonic() - t0)
            await b.delete_all()
    results = []
    for times in sidecar_times:
        ratios = [s / e for s, e in zip(times, engine_times, strict=True)]
        results.append({"pods": n, "sidecar_s": [round(x, 2) for x in times],
                        "engine_s": [round(x, 2) for x in engine_times],
                        "ratios": [round(r, 2) for r in ratios], "ratio_median": round(statistics.median(ratios), 2),
                        "target_ratio": 1.5})
    return results


async def deletes(b: Bench, n: int) -> dict[str, Any]:
    names = [f"del-{i:03d}" for i in range(n)]
    sem = asyncio.Semaphore(8)

    async def make(name: str) -> None:
        async with sem:
            await b.create(b.request(name))

    await asyncio.gather(*(make(x) for x in names))
    await b.wait(lambda: all(b.running(x) for x in names))
    times = []
    for name in names:
        t0 = time.monotonic()
        await b.delete(name)
        times.append(time.monotonic() - t0)
    return {"pods": n, "delete_grace_0_s": summary(times), "target_p50_s": 1.0}


async def idle(b: Bench, n: int) -> dict[str, Any]:
    assert b.proc is not None
    rss_before = rss_mib(b.proc.pid)
    names = [f"idle-{i:03d}" for i in range(n)]
    sem = asyncio.Semaphore(8)

    async def make(name: str) -> None:
        async with sem:
            await b.create(b.request(name))

    t0 = time.monotonic()
    await asyncio.gather(*(make(x) for x in names))
    await b.wait(lambda: all(b.running(x) for x in names))
    all_running = time.monotonic() - t0
    cpu0 = cpu_seconds(b.proc.pid)
    await asyncio.sleep(20)
    idle_cpu = cpu_seconds(b.proc.pid) - cpu0
    result = {"pods": n, "rss_empty_mib": rss_before, "rss_with_pods_mib": rss_mib(b.proc.pid),
              "create_all_running_s": round(all_running, 1), "idle_cpu_s_in_20s": round(idle_cpu, 3)}
    t0 = time.monotonic()
    await b.delete_all()
    result["delete_all_s"] = round(time.monotonic() - t0, 1)
    return result


def compare(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float]:
    """This tree's numbers over the baseline's (1.10 = 10 % slower)."""
    out: dict[str, float] = {}
    for part, key, stat in (("sequential", "overhead_vs_container_s", "p50"), ("sequential", "overhead_vs_container_s", "p95"),
                            ("sequential", "raw_latency_s", "p50"), ("delete", "delete_grace_0_s", "p50")):
        if part in after and part in before and before[part][key][stat]:
            out[f"{part}.{key}.{stat}"] = round(after[part][key][stat] / before[part][key][stat], 3)
    if "burst" in after and "burst" in before:
        out["burst.ratio_median"] = round(after["burst"]["ratio_median"] / before["burst"]["ratio_median"], 3)
    return out


def worktree(ref: str, into: Path) -> str:
    """A detached worktree of `ref` at `into`; returns its commit."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(into), ref],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run(["git", "-C", str(into), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds; the median ratio is reported")
    parser.add_argument("--deletes", type=int, default=20)
    parser.add_argument("--idle-pods", type=int, default=200)
    parser.add_argument("--baseline", metavar="GIT_REF", default=None,
                        help="also measure the sidecar of this commit, side by side in the same run")
    args = parser.parse_args()
    record = Run("sidecar_overhead")
    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kod-bench-") as tmp:
        benches = [Bench(Path(tmp) / "this")]
        if args.baseline:
            print(f"baseline: a worktree of {args.baseline}", flush=True)
            baseline["ref"] = args.baseline
            baseline["commit"] = worktree(args.baseline, Path(tmp) / "baseline-tree")
            benches.append(Bench(Path(tmp) / "baseline", root=Path(tmp) / "baseline-tree"))
        parts = [results, baseline]
        try:
            for b in benches:
                await b.start()
            await sequential(benches, 1)  # warm-up (first-use costs: connections, caches, the image)
            if args.sequential:
                for part, got in zip(parts, await sequential(benches, args.sequential), strict=False):
                    part["sequential"] = got
                print("sequential:", json.dumps(results["sequential"]), flush=True)
                if baseline:
                    print("  baseline:", json.dumps(baseline["sequential"]), flush=True)
            if args.burst:
                for part, got in zip(parts, await burst(benches, args.burst, args.rounds), strict=False):
                    part["burst"] = got
                print("burst:", json.dumps(results["burst"]), flush=True)
                if baseline:
                    print("  baseline:", json.dumps(baseline["burst"]), flush=True)
            if args.deletes:
                for part, b in zip(parts, benches, strict=False):
                    part["delete"] = await deletes(b, args.deletes)
                print("delete:", json.dumps(results["delete"]), flush=True)
                if baseline:
                    print("  baseline:", json.dumps(baseline["delete"]), flush=True)
            if args.idle_pods:
                results["idle"] = await idle(benches[0], args.idle_pods)
                print("idle:", json.dumps(results["idle"]), flush=True)
        finally:
            for b in benches:
                await b.close()
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "baseline-tree")],
                               capture_output=True, check=False, timeout=120)
    if baseline:
        results["baseline"] = baseline
        results["compare"] = compare(results, baseline)
        print("this tree / baseline:", json.dumps(results["compare"]), flush=True)
    record.write(results)


if __name__ == "__main__":
    asyncio.run(main())
