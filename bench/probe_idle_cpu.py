"""Idle CPU cost of probes: the virtual node (vk_bridge -> interlink -> Docker sidecar -> Docker)
against the real kubelet of kod-worker, side by side in one run.

    flock /tmp/kod-e2e.lock .venv/bin/python -m bench.probe_idle_cpu [--pods 20] [--seconds 60] [--quick]

Scenarios, each with --pods pods (kod/testbox running busybox httpd on port 8080, restartPolicy
Always) on the benchmark's private virtual node and on kod-worker, one node after the other
(--together: both at once, in one window):

- none:      no probes (the baseline: what idle pods cost);
- http-tcp:  httpGet readiness (GET /healthz) + tcpSocket liveness, periodSeconds --period (1);
- http-exec: httpGet readiness + exec liveness (`cat /www/healthz`), periodSeconds --period (1).

Once every pod is Ready, the run settles --settle seconds (during which it checks
that the probes really run about once a second: the kubelet's prober_probe_total, and the exec
events Docker sends for the virtual node's exec probes), then samples --seconds seconds. It
reads utime+stime (and cutime+cstime: the children the process reaped, e.g. runc and the exec'd
probe commands a shim waits for) from /proc/<pid>/stat, in clock ticks, for every process of
each component, at the start, every --interval seconds and at the end. A component is its main
process plus its live descendants (threads are in the process's own times, dead ones too):

- virtual node: kod-vk, kod-interlink, kod-docker-sidecar (the private stack's PID files), dockerd
  and Docker's containerd, and the containerd shims of the pods' containers (matched by the
  containers' cgroups);
- kod-worker: the kubelet and the cluster's containerd (localenv's PID files), and the shims of
  the pods' sandboxes (matched by the pods' cgroups).

Printed per scenario and node: CPU % of one core, per component, and the cost of the probes
(the scenario minus `none`, in % of a core and in CPU milliseconds per probe). Not in the totals,
for context: the pods' own processes (httpd answering the probes) and the whole machine's busy %.
Components other than these (the API server, etcd, ...) are not measured.

Runs against a private desktop stack (`<node>-bench`, bench/virtual_node_common.py) and namespace
kod-bench; deletes its pods after each window and stops the private stack at the end (unless
--keep-stack). Writes bench/results/probe_idle_cpu.json (bench/results.py: stamped with date,
commit and load average); --quick writes probe_idle_cpu_quick.json, so a check never replaces a
full run's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.results import Run  # noqa: E402
from bench.virtual_node_common import BENCH_NAMESPACE, DOCKER, IMAGE, SIDECAR_LABEL, Bench, running_bench  # noqa: E402
from kod import errors, labels  # noqa: E402
from localenv import cluster as cluster_mod  # noqa: E402
from localenv import procs  # noqa: E402
from localenv import settings as localenv_settings  # noqa: E402
from localenv.paths import paths_for  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 8080
SERVE = f"mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p {PORT} -h /www"
SCENARIO_LABEL = "kod.io/probe-scenario"
#: A probe every second by default (--period); the other fields at the kubelet's defaults (timeout 1 s, failure 3).
PERIOD = 1


def scenarios(period: int) -> dict[str, dict[str, Any]]:
    """The containers' probe fields of each scenario, probing every `period` seconds."""
    readiness = {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": period}
    return {
        "none": {},
        "http-tcp": {"readinessProbe": readiness, "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": period}},
        "http-exec": {"readinessProbe": readiness,
                      "livenessProbe": {"exec": {"command": ["cat", "/www/healthz"]}, "periodSeconds": period}},
    }


def set_period(period: int) -> None:
    """Probe every `period` seconds in this run (main() calls it once, before any pod exists)."""
    global PERIOD, SCENARIOS, PROBE_RATE
    PERIOD = period
    SCENARIOS = scenarios(period)
    PROBE_RATE = {name: len(probes) / period for name, probes in SCENARIOS.items()}


SCENARIOS: dict[str, dict[str, Any]] = scenarios(PERIOD)
#: Probes per pod and second in each scenario.
PROBE_RATE = {name: len(probes) / PERIOD for name, probes in SCENARIOS.items()}
VIRTUAL, WORKER = "virtual", "kod-worker"
COMPONENTS = {
    VIRTUAL: ("vk_bridge", "interlink", "docker-sidecar", "dockerd", "containerd (docker)", "shims"),
    WORKER: ("kubelet", "containerd (cluster)", "shims"),
}
#: Components whose busiest threads are reported (the shims are many small processes).
THREADED = {"vk_bridge", "interlink", "docker-sidecar", "dockerd", "containerd (docker)", "kubelet", "containerd (cluster)"}
IN_PODS = "in-pod processes"

T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {line}", flush=True)


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc/.../stat after the command name (fields[0] is the state), or None
    when the process is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


class Ticks(NamedTuple):
    """A process's CPU time in clock ticks: its own (utime+stime, all its threads, dead ones
    too), that of the children it reaped (cutime+cstime), and its start time (which tells a
    reused PID from the process first seen)."""

    own: int
    reaped: int
    start: int


def proc_ticks(pid: int) -> Ticks | None:
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
    if f is None:
        return None
    return Ticks(own=int(f[11]) + int(f[12]), reaped=int(f[13]) + int(f[14]), start=int(f[19]))


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (thread name, utime+stime) of a process's live threads."""
    out: dict[int, tuple[str, int]] = {}
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        base = Path(f"/proc/{pid}/task/{tid}")
        f = _stat_fields(base / "stat")
        if f is None:
            continue
        try:
            name = (base / "comm").read_text().strip()
        except OSError:
            name = "?"
        out[tid] = (name, int(f[11]) + int(f[12]))
    return out


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    exe: str
    argv: tuple[str, ...]


def process_table() -> dict[int, ProcInfo]:
    table: dict[int, ProcInfo] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        f = _stat_fields(entry / "stat")
        if f is None:
            continue
        try:
            argv = tuple(a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a)
        except OSError:
            continue
        try:
            exe = os.path.basename(os.readlink(entry / "exe"))
        except OSError:
            exe = ""
        table[int(entry.name)] = ProcInfo(pid=int(entry.name), ppid=int(f[1]), exe=exe, argv=argv)
    return table


def descendants(table: dict[int, ProcInfo], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cgroups(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def shims_of(table: dict[int, ProcInfo], keys: Iterable[str]) -> list[int]:
    """The containerd shims one of whose children (a container's first process) is in a cgroup
    naming one of `keys` (container IDs for Docker, pod UIDs for the kubelet)."""
    keys = [k for k in keys if k]
    found = []
    for p in table.values():
        if not p.exe.startswith("containerd-shim"):
            continue
        kids = [c.pid for c in table.values() if c.ppid == p.pid]
        if any(any(k in cgroups(c) for k in keys) for c in kids):
            found.append(p.pid)
    return sorted(found)


def machine_busy() -> tuple[int, int]:
    """(busy ticks, all ticks) of the whole machine, from /proc/stat (idle and iowait are idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already in user
    return total - fields[3] - fields[4], total


# --------------------------------------------------------------------------------------------
# Which processes
# --------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    root: int | None
    pids: list[int] = field(default_factory=list)
    in_total: bool = True
    note: str = ""


def _dockerd(table: dict[int, ProcInfo]) -> int | None:
    paths = paths_for(localenv_settings.load())
    pid = procs.running_pid(cluster_mod.docker_state_dir(paths) / "dockerd.pid")
    if pid is not None:
        return pid
    found = [p.pid for p in table.values() if p.exe == "dockerd"]
    return found[0] if len(found) == 1 else None


def _docker_containerd(table: dict[int, ProcInfo], dockerd: int | None, cluster_containerd: int | None) -> int | None:
    """Docker's containerd: dockerd's child (Debian's dockerd starts its own), else the one
    containerd that is not the cluster's."""
    if dockerd is not None:
        kids = [p.pid for p in table.values() if p.ppid == dockerd and p.exe == "containerd"]
        if kids:
            return kids[0]
    others = [p.pid for p in table.values() if p.exe == "containerd" and p.pid != cluster_containerd]
    return others[0] if len(others) == 1 else None


async def docker_container_ids(b: Bench, uids: set[str]) -> list[str]:
    params = {"all": "true", "filters": json.dumps({"label": [f"{SIDECAR_LABEL}={b.stack.settings.sidecar_name}"]})}
    async with b.docker.get(f"{DOCKER}/containers/json", params=params) as resp:
        listing = await resp.json()
    return [c["Id"] for c in listing if (c.get("Labels") or {}).get(labels.D_POD_UID) in uids]


def components(node: str, b: Bench, uids: set[str], container_ids: list[str]) -> list[Component]:
    """The processes of `node`'s components now (PIDs from the stacks' own PID files first)."""
    table = process_table()
    paths = paths_for(localenv_settings.load())
    cluster_containerd = procs.running_pid(paths.run_dir / "containerd.pid")
    if node == VIRTUAL:
        dockerd = _dockerd(table)
        roots: list[tuple[str, int | None]] = [
            ("vk_bridge", b.pid("vk")), ("interlink", b.pid("interlink")), ("docker-sidecar", b.pid("sidecar")),
            ("dockerd", dockerd), ("containerd (docker)", _docker_containerd(table, dockerd, cluster_containerd)),
        ]
        shims = shims_of(table, container_ids)
    else:
        roots = [("kubelet", procs.running_pid(paths.run_dir / "kubelet.pid")), ("containerd (cluster)", cluster_containerd)]
        shims = shims_of(table, [*uids, *(u.replace("-", "_") for u in uids)])
    out = []
    claimed = {pid for _, pid in roots if pid is not None} | set(shims)
    for name, root in roots:
        c = Component(name=name, root=root)
        if root is None:
            c.note = "not found"
        else:
            # The live descendants too, but not another component's (dockerd's containerd).
            c.pids = [root, *(d for d in descendants(table, root) if d not in claimed)]
        out.append(c)
    out.append(Component(name="shims", root=None, pids=shims))
    pod_procs = sorted({d for s in shims for d in descendants(table, s)})
    out.append(Component(name=IN_PODS, root=None, pids=pod_procs, in_total=False,
                         note="the pods' own processes (httpd, pause): not in the total"))
    return out


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


Readings = dict[int, Ticks | None]


def read_all(comps: dict[str, list[Component]]) -> Readings:
    return {pid: proc_ticks(pid) for cs in comps.values() for c in cs for pid in c.pids}


def delta_ticks(c: Component, first: Readings, now: Readings) -> tuple[int, int, int]:
    """(ticks the component's processes used themselves between the readings, ticks of the
    children they reaped meanwhile, processes gone meanwhile)."""
    own, reaped, gone = 0, 0, 0
    for pid in c.pids:
        a, z = first.get(pid), now.get(pid)
        if a is None:
            continue
        if z is None or z.start != a.start:
            gone += 1
            continue
        own += z.own - a.own
        reaped += z.reaped - a.reaped
    return own, reaped, gone


async def sample(comps: dict[str, list[Component]], seconds: float, interval: float) -> dict[str, dict[str, Any]]:
    """Readings at the start, every `interval` seconds and at the end; per node and component
    the CPU % of one core over the window, per interval the node's total, the busiest threads."""
    threads0 = {c.root: thread_ticks(c.root) for cs in comps.values() for c in cs if c.root and c.name in THREADED}
    machine0 = machine_busy()
    t0 = time.monotonic()
    first = read_all(comps)
    readings = [(t0, first)]
    while (left := t0 + seconds - time.monotonic()) > 0:
        await asyncio.sleep(min(interval, left))
        readings.append((time.monotonic(), read_all(comps)))
    t1, last = readings[-1]
    machine1 = machine_busy()
    threads1 = {root: thread_ticks(root) for root in threads0}
    window = t1 - t0
    busy = round(100 * (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1]), 1)
    out: dict[str, dict[str, Any]] = {}
    for node, cs in comps.items():
        node_out: dict[str, Any] = {"window_s": round(window, 2), "machine_busy_pct_of_all_cpus": busy, "components": {}}
        total = 0.0
        for c in cs:
            own, reaped, gone = delta_ticks(c, first, last)
            ticks = own + reaped
            pct = 100 * ticks / CLK_TCK / window
            entry: dict[str, Any] = {"cpu_pct": round(pct, 2), "cpu_s": round(ticks / CLK_TCK, 2),
                                     "own_pct": round(100 * own / CLK_TCK / window, 2),
                                     "reaped_children_pct": round(100 * reaped / CLK_TCK / window, 2),
                                     "processes": len(c.pids), "pids": c.pids[:50]}
            if gone:
                entry["gone_during_window"] = gone
            if c.note:
                entry["note"] = c.note
            if c.root in threads0:
                before, after = threads0[c.root], threads1[c.root]
                busiest = sorted(((after[t][1] - before[t][1], t, after[t][0]) for t in after if t in before), reverse=True)[:3]
                entry["top_threads"] = [{"tid": t, "name": n, "cpu_pct": round(100 * d / CLK_TCK / window, 2)} for d, t, n in busiest if d > 0]
            if c.in_total:
                total += pct
            else:
                entry["in_total"] = False
            node_out["components"][c.name] = entry
        node_out["total_pct"] = round(total, 2)
        per = []
        for (ta, ra), (tb, rb) in zip(readings, readings[1:]):
            ticks = sum(sum(delta_ticks(c, ra, rb)[:2]) for c in cs if c.in_total)
            per.append(round(100 * ticks / CLK_TCK / (tb - ta), 1))
        node_out["intervals_pct"] = per
        out[node] = node_out
    return out


# --------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------


def pod(b: Bench, node: str, scenario: str, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", SERVE],
                        "ports": [{"containerPort": PORT}], **SCENARIOS[scenario]}],
    }
    if node == VIRTUAL:
        spec["nodeName"] = b.node
        spec["tolerations"] = [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists"}]
    else:
        spec["nodeName"] = b.stack.cluster.node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"probe-{scenario}-{'vn' if node == VIRTUAL else 'kw'}-{i}", "namespace": b.namespace,
                         "labels": {"kod.io/bench": "probe-idle-cpu", SCENARIO_LABEL: scenario}},
            "spec": spec}


def node_of(b: Bench, p: dict[str, Any]) -> str:
    return VIRTUAL if p["spec"].get("nodeName") == b.node else WORKER


def is_ready(p: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get("conditions") or [])


def restarts(p: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount") or 0) for s in (p.get("status") or {}).get("containerStatuses") or [])


async def scenario_pods(b: Bench, scenario: str) -> list[dict[str, Any]]:
    listing = await b.kube.get(f"/api/v1/namespaces/{b.namespace}/pods", params={"labelSelector": f"{SCENARIO_LABEL}={scenario}"})
    return list(listing.get("items", []))


async def wait_ready(b: Bench, scenario: str, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = await scenario_pods(b, scenario)
        ready = [p for p in items if is_ready(p)]
        if len(ready) == n:
            return items
        if time.monotonic() > deadline:
            by = {node: sum(1 for p in ready if node_of(b, p) == node) for node in (VIRTUAL, WORKER)}
            raise TimeoutError(f"{scenario}: only {len(ready)} of {n} pods Ready after {timeout:.0f} s ({by})")
        await asyncio.sleep(0.5)


async def delete_and_wait(b: Bench, scenario: str, shim_pids: list[int], timeout: float = 120) -> None:
    """Delete the scenario's pods (grace 1 s: each node stops the containers before the object
    goes) and wait until they are gone from the API and their shims have exited, so the next
    window holds none of this cleanup."""
    items = await scenario_pods(b, scenario)
    await asyncio.gather(*(b.kube.delete(f"/api/v1/namespaces/{b.namespace}/pods/{p['metadata']['name']}",
                                         grace_seconds=1, missing_ok=True) for p in items))
    deadline = time.monotonic() + timeout
    starts = {pid: proc_ticks(pid) for pid in shim_pids}
    while time.monotonic() < deadline:
        left = await scenario_pods(b, scenario)
        alive = [pid for pid, s in starts.items() if s is not None and (now := proc_ticks(pid)) is not None and now.start == s.start]
        if not left and not alive:
            return
        await asyncio.sleep(0.5)
    say(f"note: {scenario}: pods or shims still there {timeout:.0f} s after the delete")


# --------------------------------------------------------------------------------------------
# Are the probes running? (checked during the settle time, outside the window)
# --------------------------------------------------------------------------------------------

PROBE_METRIC = re.compile(r'^prober_probe_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)')


async def kubelet_probe_counts(b: Bench, uids: set[str]) -> dict[str, float]:
    """probe_type -> prober_probe_total summed over the pods `uids` (the kubelet's /metrics/probes
    through the API server's node proxy)."""
    out: dict[str, float] = {}
    async for line in b.kube.stream_lines(f"/api/v1/nodes/{b.stack.cluster.node_name}/proxy/metrics/probes"):
        m = PROBE_METRIC.match(line)
        uid = re.search(r'pod_uid="([^"]*)"', m["labels"]) if m else None
        if not m or not uid or uid.group(1) not in uids:
            continue
        kind = re.search(r'probe_type="([^"]*)"', m["labels"])
        key = kind.group(1) if kind else "?"
        out[key] = out.get(key, 0.0) + float(m["value"])
    return out


async def count_docker_execs(b: Bench, uids: set[str], seconds: float) -> int:
    """Exec starts Docker reports for the pods' containers over `seconds` (the exec probes)."""
    params = {"filters": json.dumps({"type": ["container"], "event": ["exec_start"],
                                     "label": [f"{SIDECAR_LABEL}={b.stack.settings.sidecar_name}"]})}
    count = 0

    async def read() -> None:
        nonlocal count
        async with b.docker.get(f"{DOCKER}/events", params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for line in resp.content:
                ev = json.loads(line)
                if ev.get("Actor", {}).get("Attributes", {}).get(labels.D_POD_UID) in uids:
                    count += 1

    try:
        await asyncio.wait_for(read(), seconds)
    except TimeoutError:
        pass
    return count


async def probe_check(b: Bench, scenario: str, uids: dict[str, set[str]], seconds: float) -> dict[str, dict[str, Any]]:
    """Per node: probes per second actually run over `seconds` of the settle time, against the
    expected (kod-worker: all its probes; the virtual node: its exec probes, the ones Docker sees)."""
    out: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    before = await kubelet_probe_counts(b, uids[WORKER]) if WORKER in uids else {}
    execs = asyncio.create_task(count_docker_execs(b, uids[VIRTUAL], seconds)) if "exec" in scenario and VIRTUAL in uids else None
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    if WORKER in uids:
        after = await kubelet_probe_counts(b, uids[WORKER])
        took = time.monotonic() - t0
        per = {k: round((after.get(k, 0) - before.get(k, 0)) / took, 2) for k in after}
        out[WORKER] = {"seconds": round(took, 1), "what": "prober_probe_total", "by_type_per_s": per,
                       "probes_per_s": round(sum(per.values()), 2), "expected_per_s": len(uids[WORKER]) * PROBE_RATE[scenario]}
    if execs is not None:
        out[VIRTUAL] = {"seconds": round(seconds, 1), "what": "Docker exec_start events",
                        "probes_per_s": round(await execs / seconds, 2), "expected_per_s": len(uids[VIRTUAL]) / PERIOD}
    return out


# --------------------------------------------------------------------------------------------
# One window
# --------------------------------------------------------------------------------------------


async def run_window(b: Bench, scenario: str, nodes: tuple[str, ...], n: int, seconds: float, settle: float,
                     interval: float, ready_timeout: float) -> dict[str, dict[str, Any]]:
    """`n` pods of `scenario` on each of `nodes`, all Ready, settled, then one sampling window;
    returns each node's figures. The pods are deleted at the end."""
    bodies = [pod(b, node, scenario, i) for node in nodes for i in range(n)]
    where = " and ".join(b.node if node == VIRTUAL else b.stack.cluster.node_name for node in nodes)
    say(f"{scenario}: creating {n} pods on {where}")
    shim_pids: list[int] = []
    try:
        t0 = time.monotonic()
        for i in range(0, len(bodies), 10):  # 10 at a time: a burst, not 40 API calls at once
            await asyncio.gather(*(b.kube.create(f"/api/v1/namespaces/{b.namespace}/pods", body) for body in bodies[i:i + 10]))
        items = await wait_ready(b, scenario, len(bodies), ready_timeout)
        say(f"{scenario}: all {len(bodies)} pods Ready in {time.monotonic() - t0:.1f} s; settling {settle:.0f} s")
        settle_t0 = time.monotonic()
        uids = {node: {p["metadata"]["uid"] for p in items if node_of(b, p) == node} for node in nodes}
        cids = await docker_container_ids(b, uids[VIRTUAL]) if VIRTUAL in uids else []
        check: dict[str, dict[str, Any]] = {}
        if PROBE_RATE[scenario]:
            # The check's own calls (metrics, an event stream) end 2 s before the window.
            check = await probe_check(b, scenario, uids, max(1.0, settle - 2))
        comps = {node: components(node, b, uids[node], cids) for node in nodes}
        shim_pids = [pid for cs in comps.values() for c in cs if c.name == "shims" for pid in c.pids]
        await asyncio.sleep(max(0.0, settle - (time.monotonic() - settle_t0)))
        restarts0 = {p["metadata"]["name"]: restarts(p) for p in items}
        load0 = os.getloadavg()[0]
        say(f"{scenario}: sampling {seconds:.0f} s ("
            + "; ".join(f"{node}: " + ", ".join(f"{c.name} {c.root or len(c.pids)}" for c in cs if c.in_total) for node, cs in comps.items()) + ")")
        result = await sample(comps, seconds, interval)
        after = await scenario_pods(b, scenario)
        load1 = os.getloadavg()[0]
        for node in nodes:
            mine = [p for p in after if node_of(b, p) == node]
            r = result[node]
            r["node"] = b.node if node == VIRTUAL else b.stack.cluster.node_name
            r["measured_with"] = list(nodes)
            r["load_average_1min"] = {"start": round(load0, 2), "end": round(load1, 2)}
            r["probe_check"] = check.get(node, {})
            r["restarts_during_window"] = sum(restarts(p) - restarts0.get(p["metadata"]["name"], 0) for p in mine)
            r["not_ready_at_end"] = sum(1 for p in mine if not is_ready(p))
        say(f"{scenario}: " + "; ".join(f"{node} {v['total_pct']:.1f} % of a core" for node, v in result.items())
            + f" (machine busy {next(iter(result.values()))['machine_busy_pct_of_all_cpus']:.0f} % of {os.cpu_count()} CPUs)")
        return result
    finally:
        say(f"{scenario}: deleting its pods")
        await delete_and_wait(b, scenario, shim_pids)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def probe_costs(results: dict[str, Any]) -> dict[str, Any]:
    """Per probing scenario and node: its total minus `none`'s, in % of a core and CPU ms per probe."""
    base = results.get("none", {}).get("nodes", {})
    out: dict[str, Any] = {}
    for name, r in results.items():
        if name == "none":
            continue
        for node, v in r["nodes"].items():
            if node not in base:
                continue
            extra = v["total_pct"] - base[node]["total_pct"]
            rate = r["pods_per_node"] * r["probes_per_pod_per_s"]
            out.setdefault(name, {})[node] = {"extra_pct_of_core": round(extra, 2), "probes_per_s": rate,
                                              "cpu_ms_per_probe": round(10 * extra / rate, 3) if rate else None}
    return out


def print_report(results: dict[str, Any], costs: dict[str, Any]) -> None:
    names = list(results)
    width = 30

    def row(label: str, cell: Any) -> None:
        cells = []
        for n in names:
            try:
                cells.append(cell(n))
            except KeyError:
                cells.append("-")
        print(f"  {label:<{width}}" + "".join(f"{x:>13}" for x in cells))

    for node in (VIRTUAL, WORKER):
        measured = [results[n]["nodes"][node] for n in names if node in results[n]["nodes"]]
        if not measured:
            continue
        print(f"\n{node} ({measured[0]['node']}), CPU % of one core, {results[names[0]]['pods_per_node']} pods")
        row("component", lambda n: n)
        for comp in (*COMPONENTS[node], IN_PODS):
            def cell(n: str, comp: str = comp) -> str:
                c = results[n]["nodes"][node]["components"][comp]
                return (f"({c['processes']}) " if comp in ("shims", IN_PODS) else "") + f"{c['cpu_pct']:.2f}"
            row(comp + (" (not in total)" if comp == IN_PODS else ""), cell)
            if comp == "shims":
                row("  of which reaped children", lambda n: f"{results[n]['nodes'][node]['components']['shims']['reaped_children_pct']:.2f}")
        row("total", lambda n: f"{results[n]['nodes'][node]['total_pct']:.2f}")
        row("  per-interval min..max", lambda n: "{:.1f}..{:.1f}".format(
            min(results[n]["nodes"][node]["intervals_pct"] or [0]), max(results[n]["nodes"][node]["intervals_pct"] or [0])))
        if costs:
            row("probes: extra % of a core", lambda n: f"{costs[n][node]['extra_pct_of_core']:.2f}")
            row("probes: CPU ms per probe", lambda n: f"{costs[n][node]['cpu_ms_per_probe']:.2f}")
        row("probes run / expected per s", lambda n: "{probes_per_s:g}/{expected_per_s:g}".format(**results[n]["nodes"][node]["probe_check"]))
        row("restarts / not Ready", lambda n: f"{results[n]['nodes'][node]['restarts_during_window']} / {results[n]['nodes'][node]['not_ready_at_end']}")
        row("machine busy % (all CPUs)", lambda n: f"{results[n]['nodes'][node]['machine_busy_pct_of_all_cpus']:.0f}")
        row("load (1 min) at start", lambda n: f"{results[n]['nodes'][node]['load_average_1min']['start']:.1f}")
    busiest = []
    for n in names:
        for node, v in results[n]["nodes"].items():
            for comp, c in v["components"].items():
                for t in c.get("top_threads", [])[:1]:
                    busiest.append((t["cpu_pct"], f"{n}/{node}/{comp}: thread {t['tid']} ({t['name']}) {t['cpu_pct']:.2f} %"))
    if busiest:
        print("\n  busiest threads: " + "; ".join(x for _, x in sorted(busiest, reverse=True)[:4]))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=None, help="pods per node in each scenario (default 20; 5 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="length of each sampling window (default 60; 15 with --quick)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds between all pods Ready and the window; the probe-rate check runs in it (default 10)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings within a window (default 5)")
    parser.add_argument("--period", type=int, default=1,
                        help="periodSeconds of every probe (default 1; the kubelet's default is 10)")
    parser.add_argument("--together", action="store_true",
                        help="pods on both nodes at once and one window for both (half the time; the nodes then "
                        "compete for the CPUs, which exec probes at 1 s can saturate); default: one node at a time")
    parser.add_argument("--quick", action="store_true",
                        help="a check: 5 pods and 15 s windows (unless --pods/--seconds are given); "
                        "writes probe_idle_cpu_quick.json")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append",
                        help="run only these scenarios (repeatable); default all, in the order none, http-tcp, http-exec")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for all pods of a scenario to be Ready (default 180)")
    parser.add_argument("--keep-stack", action="store_true", help="leave the private bench stack running at the end")
    args = parser.parse_args()
    if args.period < 1:
        parser.error("--period must be at least 1 (seconds)")
    set_period(args.period)
    if args.pods is None:
        args.pods = 5 if args.quick else 20
    if args.seconds is None:
        args.seconds = 15.0 if args.quick else 60.0
    names = [n for n in SCENARIOS if n in set(args.only or SCENARIOS)]
    windows: list[tuple[str, ...]] = [(VIRTUAL, WORKER)] if args.together else [(VIRTUAL,), (WORKER,)]
    # Each period has a results file of its own: a 10-s run never replaces the 1-s numbers.
    run = Run(("probe_idle_cpu_quick" if args.quick else "probe_idle_cpu") + (f"_p{args.period}" if args.period != 1 else ""))
    results: dict[str, Any] = {}
    payload: dict[str, Any] = {
        "settings": {"pods_per_node": args.pods, "window_s": args.seconds, "settle_s": args.settle, "interval_s": args.interval,
                     "period_s": PERIOD, "clock_ticks_per_s": CLK_TCK, "quick": args.quick, "together": args.together,
                     "image": IMAGE, "namespace": BENCH_NAMESPACE, "scenarios": {n: SCENARIOS[n] for n in names},
                     "method": "utime+stime (own) and cutime+cstime (reaped children) from /proc/<pid>/stat of each "
                               "component's processes (main process + live descendants), first and last reading of the "
                               "window; " + ("both nodes in one window" if args.together else "one node per window")},
        "scenarios": results,
    }
    say(f"scenarios {', '.join(names)}: {args.pods} pods per node, settle {args.settle:.0f} s, window {args.seconds:.0f} s, "
        + ("both nodes at once" if args.together else "one node at a time"))
    try:
        async with running_bench(keep_stack=args.keep_stack) as b:
            # Bench's own Docker event stream would make dockerd send this process every exec
            # event of the window: stop it (nothing here reads it).
            for t in b._tasks:
                if t.get_coro().__name__ == "_docker_events":  # type: ignore[union-attr]
                    t.cancel()
            say(f"private virtual node {b.node}; real node {b.stack.cluster.node_name}; namespace {b.namespace}")
            imported = await asyncio.to_thread(b.stack.cluster.import_images, [IMAGE])
            if imported:
                say(f"imported {', '.join(imported)} into the cluster's containerd")
            for name in names:
                entry = results[name] = {"pods_per_node": args.pods, "probes_per_pod_per_s": PROBE_RATE[name], "nodes": {}}
                for nodes in windows:
                    entry["nodes"].update(await run_window(b, name, nodes, args.pods, args.seconds, args.settle,
                                                           args.interval, args.ready_timeout))
    except errors.KodError as err:
        raise SystemExit(f"probe_idle_cpu: {err}") from err
    finally:
        done = {n: r for n, r in results.items() if r["nodes"]}
        if done:
            payload["scenarios"] = done
            payload["probe_cost"] = costs = probe_costs(done)
            print_report(done, costs)
            run.write(payload)


if __name__ == "__main__":
    asyncio.run(main())
