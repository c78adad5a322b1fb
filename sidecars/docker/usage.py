"""What `kubectl top` shows of the desktop: the pods' containers' CPU time and memory, and the
machine's, read where the kernel keeps them.

    usage = Usage(settings, engine)
    report = await usage.report(pods)          # wire.UsageReport, for GET /v1/stats

Containers are read from their cgroup files (cgroup v1: cpuacct.usage, memory.usage_in_bytes and
memory.stat under <controller>/docker/<id>; v2: cpu.stat, memory.current and memory.stat under
docker/<id> or system.slice/docker-<id>.scope), a few small reads per container, the same files
the kubelet's cAdvisor reads. Docker's `/containers/{id}/stats?stream=false&one-shot=true` gives
the same figures but costs an HTTP round trip per container and dockerd's own collection (its
one-shot answer still reads every controller and the network), so it is only the fallback, for
engines whose cgroups this process cannot see (Docker Desktop's VM, a rootless engine, another
cgroup parent). The machine's figures come from /proc/stat and /proc/meminfo (the whole desktop,
as a kubelet reports its whole node), the disk from statvfs of the engine's data root.

Contract: never raises for a pod or a container it cannot read; it leaves the figure out and
names the reason in `errors`, so one odd container never hides the others.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kod import errors, wire
from kod.log import get_logger
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.state import PodState

log = get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: USER_HZ: the unit of /proc/stat (100 on every Linux the kernel's ABI promises it for).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _now() -> datetime:
    return datetime.now(UTC)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_keyed(path: Path) -> dict[str, int]:
    """A `key value` per line file (memory.stat, cpu.stat) as a dict; {} when unreadable."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value.strip())
        except ValueError:
            continue
    return out


def memory_from_cgroup(usage: int, stat: dict[str, int], *, v2: bool) -> wire.MemoryUsage:
    """cAdvisor's figures: working set = usage less inactive file pages (never below 0)."""
    inactive = stat.get("inactive_file" if v2 else "total_inactive_file", 0)
    rss = stat.get("anon" if v2 else "total_rss")
    faults = stat.get("pgfault" if v2 else "total_pgfault")
    major = stat.get("pgmajfault" if v2 else "total_pgmajfault")
    return wire.MemoryUsage(
        usageBytes=usage, workingSetBytes=max(usage - inactive, 0), rssBytes=rss, pageFaults=faults,
        majorPageFaults=major,
    )


@dataclass(frozen=True)
class Cgroups:
    """Where this machine keeps the engine's containers' cgroups: found by the container's id
    under Docker's default parents, else from /proc/<pid>/cgroup of its main process (any
    --cgroup-parent; needs the engine's PID namespace)."""

    root: Path = CGROUP_ROOT
    proc: Path = Path("/proc")

    @property
    def v2(self) -> bool:
        return (self.root / "cgroup.controllers").exists()

    def find(self, cid: str) -> tuple[Path, Path] | None:
        """(cpu dir, memory dir) under Docker's default parents (cgroupfs and systemd drivers)."""
        if self.v2:
            for d in (self.root / "docker" / cid, self.root / "system.slice" / f"docker-{cid}.scope"):
                if (d / "cpu.stat").is_file():
                    return d, d
            return None
        dirs = []
        for names, probe in ((("cpuacct", "cpu,cpuacct", "cpuacct,cpu"), "cpuacct.usage"), (("memory",), "memory.usage_in_bytes")):
            found = next((d for n in names for d in (self.root / n / "docker" / cid, self.root / n / "system.slice" / f"docker-{cid}.scope")
                          if (d / probe).is_file()), None)
            if found is None:
                return None
            dirs.append(found)
        return dirs[0], dirs[1]

    def from_pid(self, pid: int) -> tuple[Path, Path] | None:
        """(cpu dir, memory dir) of a process, from /proc/<pid>/cgroup."""
        try:
            lines = (self.proc / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            return None
        paths: dict[str, str] = {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path.lstrip("/")
        if self.v2:
            d = self.root / paths.get("", "")
            return (d, d) if (d / "cpu.stat").is_file() else None
        if "cpuacct" not in paths or "memory" not in paths:
            return None
        cpu = next((self.root / n / paths["cpuacct"] for n in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
                    if (self.root / n / paths["cpuacct"] / "cpuacct.usage").is_file()), None)
        mem = self.root / "memory" / paths["memory"]
        return (cpu, mem) if cpu is not None and (mem / "memory.usage_in_bytes").is_file() else None

    def read(self, dirs: tuple[Path, Path]) -> tuple[wire.CpuUsage, wire.MemoryUsage] | None:
        """CPU time and memory from a container's cgroup directories; None when unreadable
        (the container is gone)."""
        cpu_dir, mem_dir = dirs
        if self.v2:
            usec = read_keyed(cpu_dir / "cpu.stat").get("usage_usec")
            current = _read_int(mem_dir / "memory.current")
            if usec is None or current is None:
                return None
            return wire.CpuUsage(usageCoreNanoSeconds=usec * 1000), memory_from_cgroup(
                current, read_keyed(mem_dir / "memory.stat"), v2=True)
        ns, usage = _read_int(cpu_dir / "cpuacct.usage"), _read_int(mem_dir / "memory.usage_in_bytes")
        if ns is None or usage is None:
            return None
        return wire.CpuUsage(usageCoreNanoSeconds=ns), memory_from_cgroup(
            usage, read_keyed(mem_dir / "memory.stat"), v2=False)


def from_docker_stats(stats: dict[str, Any]) -> tuple[wire.CpuUsage | None, wire.MemoryUsage | None]:
    """The figures of one answer of Docker's stats API (v1 and v2 memory.stat keys)."""
    total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    cpu = wire.CpuUsage(usageCoreNanoSeconds=int(total)) if total is not None else None
    mem = stats.get("memory_stats") or {}
    memory = None
    if mem.get("usage") is not None:
        stat = {k: int(v) for k, v in (mem.get("stats") or {}).items() if isinstance(v, int)}
        memory = memory_from_cgroup(int(mem["usage"]), stat, v2="inactive_file" in stat and "total_inactive_file" not in stat)
    return cpu, memory


def read_proc_stat(path: Path = Path("/proc/stat")) -> tuple[int | None, datetime | None]:
    """(busy CPU time of all CPUs in ns, boot time): user+nice+system+irq+softirq+steal, as a
    kubelet's root cgroup counts it (idle and iowait are not use)."""
    busy, boot = None, None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [int(x) for x in parts[1:]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
            busy = (user + nice + system + irq + softirq + steal) * 1_000_000_000 // CLOCK_TICKS
        elif parts and parts[0] == "btime":
            boot = datetime.fromtimestamp(int(parts[1]), UTC)
    return busy, boot


def read_meminfo(path: Path = Path("/proc/meminfo")) -> wire.MemoryUsage | None:
    """The machine's memory as the kubelet reports its node (the root cgroup): usage = total - free,
    working set = usage - inactive file pages, rss = anonymous pages, available = MemAvailable."""
    kib: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                kib[key] = int(fields[0]) * 1024
    except (OSError, ValueError):
        return None
    if "MemTotal" not in kib or "MemFree" not in kib:
        return None
    usage = kib["MemTotal"] - kib["MemFree"]
    return wire.MemoryUsage(
        usageBytes=usage, workingSetBytes=max(usage - kib.get("Inactive(file)", 0), 0),
        rssBytes=kib.get("AnonPages"), availableBytes=kib.get("MemAvailable"),
    )


def read_fs(path: str) -> wire.FsUsage | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return wire.FsUsage(
        capacityBytes=st.f_blocks * st.f_frsize, availableBytes=st.f_bavail * st.f_frsize,
        usedBytes=(st.f_blocks - st.f_bfree) * st.f_frsize, inodes=st.f_files, inodesFree=st.f_ffree,
    )


def node_usage(data_root: str = "/", proc: Path = Path("/proc")) -> wire.NodeUsage:
    busy, boot = read_proc_stat(proc / "stat")
    return wire.NodeUsage(
        time=_now(), startTime=boot, cpu=wire.CpuUsage(usageCoreNanoSeconds=busy) if busy is not None else None,
        memory=read_meminfo(proc / "meminfo"), fs=read_fs(data_root),
    )


class Usage:
    """The readings behind GET /v1/stats."""

    def __init__(self, engine: Engine, cgroups: Cgroups | None = None) -> None:
        self.engine = engine
        self.cgroups = cgroups or Cgroups()
        #: container id -> its cgroup dirs (None: not visible here; ask the engine's stats API).
        self._dirs: dict[str, tuple[Path, Path] | None] = {}

    async def _locate(self, cid: str) -> tuple[Path, Path] | None:
        if cid in self._dirs:
            return self._dirs[cid]
        dirs = self.cgroups.find(cid)
        if dirs is None:
            try:
                pid = int(((await self.engine.inspect_container(cid)).get("State") or {}).get("Pid") or 0)
            except EngineError:
                pid = 0
            dirs = self.cgroups.from_pid(pid) if pid > 0 else None
            if dirs is None:
                log.info("container cgroups not visible here: reading Docker's stats API instead", container=cid[:12])
        self._dirs[cid] = dirs
        return dirs

    async def _container(self, cid: str) -> tuple[wire.CpuUsage | None, wire.MemoryUsage | None]:
        dirs = await self._locate(cid)
        if dirs is not None:
            found = self.cgroups.read(dirs)
            if found is not None:
                return found
            self._dirs.pop(cid, None)
        try:
            stats = await self.engine.container_stats(cid)
        except EngineError as exc:
            raise errors.Unavailable(f"no cgroup files and no stats from the engine: {exc}") from exc
        return from_docker_stats(stats)

    async def pod(self, pod: PodState, report: wire.UsageReport) -> wire.PodUsage | None:
        """A pod's running containers (None when none runs)."""
        containers = []
        for name, slot in pod.slots.items():
            run = slot.latest
            if run is None or run.state != "running":
                continue
            try:
                cpu, memory = await self._container(run.id)
            except errors.KodError as exc:
                report.errors.append(f"pod {pod.namespace}/{pod.name} container {name}: {exc}")
                continue
            containers.append(wire.ContainerUsage(
                name=name, startTime=run.started_at or pod.created, time=_now(), cpu=cpu, memory=memory,
            ))
        if not containers:
            return None
        started = pod.infra.started_at if pod.infra is not None else None
        return wire.PodUsage(
            namespace=pod.namespace, name=pod.name, uid=pod.uid, startTime=started or pod.created, time=_now(),
            containers=containers,
        )

    async def report(self, pods: Iterable[PodState], data_root: str = "/") -> wire.UsageReport:
        """The machine and every pod with a running container, now."""
        report = wire.UsageReport()
        report.node = await asyncio.to_thread(node_usage, data_root)
        seen: set[str] = set()
        for pod in pods:
            if pod.deleting:
                continue
            seen.update(run.id for slot in pod.slots.values() if (run := slot.latest) is not None)
            found = await self.pod(pod, report)
            if found is not None:
                report.pods.append(found)
        for cid in [c for c in self._dirs if c not in seen]:
            del self._dirs[cid]
        return report
