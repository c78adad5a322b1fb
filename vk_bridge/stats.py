"""The kubelet's resource-usage endpoints, from a provider's `wire.UsageReport`:

    GET /stats/summary      the Summary API (stats/v1alpha1 JSON), as `kubectl get --raw
                            /api/v1/nodes/<node>/proxy/stats/summary` shows it
    GET /metrics/resource   Prometheus text with the names and labels of the kubelet's
                            pkg/kubelet/metrics/collectors/resource_metrics.go: what metrics-server
                            scrapes for `kubectl top`

The report carries cumulative CPU time; the Summary API also wants a rate (usageNanoCores),
which `CpuRates` computes from the previous reading of the same container run (or node), as
cAdvisor does from its own samples. The first reading has none (the field is left out), and
metrics-server computes its own rates from /metrics/resource anyway.

    rates = CpuRates()
    summary(report, node_name="desktop", rates=rates)    # dict, JSON-ready
    resource_metrics(report)                             # str, text/plain; version=0.0.4
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kod import wire

#: The Prometheus text format version the kubelet answers with.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _rfc3339(t: datetime) -> str:
    """Kubernetes' time format (UTC, Z)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CpuRates:
    """usageNanoCores from two readings of a cumulative counter. Keyed by what must stay the
    same for the counter to be comparable (a container's run: its start time)."""

    def __init__(self, size: int = 4096) -> None:
        self._last: dict[tuple[str, ...], tuple[datetime, int, int | None]] = {}
        self._size = size

    def rate(self, key: tuple[str, ...], at: datetime, total: int) -> int | None:
        """Nanocores between the previous reading and this one; None for the first. Readings
        less than 0.5 s apart keep the previous rate (too short to be meaningful)."""
        last = self._last.get(key)
        rate: int | None = None
        if last is not None:
            seconds = (at - last[0]).total_seconds()
            if 0 < seconds < 0.5:
                return last[2]
            if seconds > 0 and total >= last[1]:
                rate = int((total - last[1]) / seconds)
        if len(self._last) >= self._size and key not in self._last:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (at, total, rate)
        return rate

    def forget_except(self, keys: Iterable[tuple[str, ...]]) -> None:
        """Drop the readings of runs that are gone."""
        keep = set(keys)
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


def _cpu(cpu: wire.CpuUsage | None, at: datetime, key: tuple[str, ...], rates: CpuRates) -> dict[str, Any] | None:
    if cpu is None:
        return None
    out: dict[str, Any] = {"time": _rfc3339(at), "usageCoreNanoSeconds": cpu.usageCoreNanoSeconds}
    rate = rates.rate(key, at, cpu.usageCoreNanoSeconds)
    if rate is not None:
        out["usageNanoCores"] = rate
    return out


def _memory(memory: wire.MemoryUsage | None, at: datetime) -> dict[str, Any] | None:
    if memory is None:
        return None
    return {"time": _rfc3339(at), **memory.model_dump(exclude_none=True)}


def _sum_memory(items: list[wire.ContainerUsage]) -> wire.MemoryUsage | None:
    known = [c.memory for c in items if c.memory is not None]
    if not known:
        return None
    total: dict[str, int] = {}
    for field in ("usageBytes", "workingSetBytes", "rssBytes", "pageFaults", "majorPageFaults"):
        values = [getattr(m, field) for m in known if getattr(m, field) is not None]
        if values:
            total[field] = sum(values)
    return wire.MemoryUsage(**total)


def _container_key(pod: wire.PodUsage, c: wire.ContainerUsage) -> tuple[str, ...]:
    return (pod.uid, c.name, c.startTime.isoformat())


def summary(report: wire.UsageReport, *, node_name: str, rates: CpuRates) -> dict[str, Any]:
    """The Summary API's answer. The pod's cpu and memory are its containers' sums (the kubelet
    reads the pod's cgroup, which also holds the pause container: a few hundred KiB more)."""
    node: dict[str, Any] = {"nodeName": node_name, "systemContainers": []}
    keys: list[tuple[str, ...]] = [("node",)]
    n = report.node
    if n is not None:
        if n.startTime is not None:
            node["startTime"] = _rfc3339(n.startTime)
        if (cpu := _cpu(n.cpu, n.time, ("node",), rates)) is not None:
            node["cpu"] = cpu
        if (memory := _memory(n.memory, n.time)) is not None:
            node["memory"] = memory
        if n.fs is not None:
            fs = {"time": _rfc3339(n.time), **n.fs.model_dump(exclude_none=True)}
            if n.fs.inodes is not None and n.fs.inodesFree is not None:
                fs["inodesUsed"] = n.fs.inodes - n.fs.inodesFree
            node["fs"] = fs
            node["runtime"] = {"imageFs": fs}
    pods = []
    for pod in report.pods:
        entry: dict[str, Any] = {
            "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "startTime": _rfc3339(pod.startTime or pod.time),
            "containers": [],
        }
        for c in pod.containers:
            key = _container_key(pod, c)
            keys.append(key)
            container: dict[str, Any] = {"name": c.name, "startTime": _rfc3339(c.startTime)}
            if (cpu := _cpu(c.cpu, c.time, key, rates)) is not None:
                container["cpu"] = cpu
            if (memory := _memory(c.memory, c.time)) is not None:
                container["memory"] = memory
            entry["containers"].append(container)
        cpus = [c.cpu.usageCoreNanoSeconds for c in pod.containers if c.cpu is not None]
        if cpus:
            key = (pod.uid, "", "pod")
            keys.append(key)
            entry["cpu"] = _cpu(wire.CpuUsage(usageCoreNanoSeconds=sum(cpus)), pod.time, key, rates)
        if (memory := _memory(_sum_memory(pod.containers), pod.time)) is not None:
            entry["memory"] = memory
        if pod.network is not None:
            entry["network"] = {"time": _rfc3339(pod.time), **pod.network.model_dump()}
        pods.append(entry)
    rates.forget_except(keys)
    return {"node": node, "pods": pods}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, stability: str, help_: str) -> None:
        self.lines += [f"# HELP {name} [{stability}] {help_}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, at: datetime | None = None, **labels: str) -> None:
        stamp = f" {_ms(at)}" if at is not None else ""
        self.lines.append(f"{name}{_labels(**labels)} {_num(value)}{stamp}")


def resource_metrics(report: wire.UsageReport) -> str:
    """/metrics/resource: the kubelet's families, in its order; a family without samples keeps
    its HELP and TYPE lines, as the kubelet's registry prints them."""
    t = _Text()
    n = report.node
    containers = [(p, c) for p in report.pods for c in p.containers]
    t.family("container_cpu_usage_seconds_total", "counter", "STABLE",
             "Cumulative cpu time consumed by the container in core-seconds")
    for p, c in containers:
        if c.cpu is not None:
            t.sample("container_cpu_usage_seconds_total", c.cpu.usageCoreNanoSeconds / 1e9, c.time,
                     container=c.name, namespace=p.namespace, pod=p.name)
    t.family("container_memory_working_set_bytes", "gauge", "STABLE", "Current working set of the container in bytes")
    for p, c in containers:
        if c.memory is not None and c.memory.workingSetBytes is not None:
            t.sample("container_memory_working_set_bytes", c.memory.workingSetBytes, c.time,
                     container=c.name, namespace=p.namespace, pod=p.name)
    t.family("container_start_time_seconds", "gauge", "STABLE", "Start time of the container since unix epoch in seconds")
    for p, c in containers:
        t.sample("container_start_time_seconds", c.startTime.timestamp(), None,
                 container=c.name, namespace=p.namespace, pod=p.name)
    t.family("node_cpu_usage_seconds_total", "counter", "STABLE", "Cumulative cpu time consumed by the node in core-seconds")
    if n is not None and n.cpu is not None:
        t.sample("node_cpu_usage_seconds_total", n.cpu.usageCoreNanoSeconds / 1e9, n.time)
    t.family("node_memory_working_set_bytes", "gauge", "STABLE", "Current working set of the node in bytes")
    if n is not None and n.memory is not None and n.memory.workingSetBytes is not None:
        t.sample("node_memory_working_set_bytes", n.memory.workingSetBytes, n.time)
    t.family("pod_cpu_usage_seconds_total", "counter", "STABLE", "Cumulative cpu time consumed by the pod in core-seconds")
    for p in report.pods:
        cpus = [c.cpu.usageCoreNanoSeconds for c in p.containers if c.cpu is not None]
        if cpus:
            t.sample("pod_cpu_usage_seconds_total", sum(cpus) / 1e9, p.time, namespace=p.namespace, pod=p.name)
    t.family("pod_memory_working_set_bytes", "gauge", "STABLE", "Current working set of the pod in bytes")
    for p in report.pods:
        memory = _sum_memory(p.containers)
        if memory is not None and memory.workingSetBytes is not None:
            t.sample("pod_memory_working_set_bytes", memory.workingSetBytes, p.time, namespace=p.namespace, pod=p.name)
    failed = 1 if report.errors else 0
    t.family("resource_scrape_error", "gauge", "STABLE", "1 if there was an error while getting container metrics, 0 otherwise")
    t.sample("resource_scrape_error", failed)
    t.family("scrape_error", "gauge", "ALPHA", "(Deprecated since 1.29.0) 1 if there was an error while getting container metrics, 0 otherwise")
    t.sample("scrape_error", failed)
    return "\n".join(t.lines) + "\n"
