"""What the desktop node reports of itself on ping: capacity, labels, taints, health, version.

Contract: pure; never fails because the engine is away (its figures then come from the settings
and this machine, and the health says why the engine is unreachable).
"""

from __future__ import annotations

import os
from typing import Any

from kod import __version__, wire
from kod.quantity import format_bytes
from sidecars.docker.settings import DockerSidecarSettings


def node_info(
    settings: DockerSidecarSettings, *, engine_info: dict[str, Any], engine_version: str, engine_error: str | None
) -> wire.NodeInfo:
    """Capacity (settings, else the engine, else this machine), labels, taints and health."""
    cap = settings.capacity
    capacity: dict[str, str] = {}
    cpus = cap.cpu or str(engine_info.get("NCPU") or os.cpu_count() or 1)
    mem_total = int(engine_info.get("MemTotal") or host_memory() or 0)
    capacity["cpu"] = cpus
    memory = cap.memory or (format_bytes(mem_total) if mem_total else None)
    if memory:
        capacity["memory"] = memory
    capacity["pods"] = str(cap.pods)
    capacity.update(cap.extra)
    health = wire.SidecarHealth(name=settings.name, ok=engine_error is None, message=engine_error)
    return wire.NodeInfo(
        capacity=capacity,
        allocatable=dict(capacity),
        taints=list(settings.taints),
        labels=dict(settings.node_labels),
        sidecars=[health],
        version=f"kod-docker-sidecar/{__version__} docker/{engine_version or 'unknown'}",
    )


def host_memory() -> int | None:
    """MemTotal of /proc/meminfo in bytes (the engine's figure is preferred; this is for when the
    engine cannot be reached)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
