"""Ceilings of desktop pods: default and maximum memory and CPU, and the process limit.

    ceilings = Ceilings.resolve(settings.limits, node_memory=24 * 2**30, node_cpu_millis=2000)
    memory, cpu = ceilings.limits_of(container)      # what Docker is told (bytes, millicores)
    problems = list(ceilings.violations("spec.containers[0]", container))

Kubernetes limits are per container, so these are too: a container without a memory (CPU) limit
gets the default, raised to its request when it asks for more (a LimitRange would refuse such a
pod; running it with its request as the limit is what it asked for); a limit or a request above
the maximum is refused. The maxima default to the node's memory and CPUs: nothing may ask for
more than the desktop has. Pods cannot ask for a process limit in Kubernetes, so every
container gets `pids`. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kod import quantity, wire
from sidecars.docker.settings import LimitsSettings


def _bytes(value: str | int | float | None) -> int:
    return quantity.to_bytes(value) if value is not None else 0


def _millis(value: str | int | float | None) -> int:
    return quantity.to_millicores(value) if value is not None else 0


def _mem(n: int) -> str:
    return quantity.format_quantity(quantity.parse(n), binary=True)


def _cpu(m: int) -> str:
    return quantity.format_quantity(quantity.parse(f"{m}m"), binary=False)


@dataclass(frozen=True)
class Ceilings:
    """The resolved ceilings (bytes and millicores; None: no maximum)."""

    default_memory: int
    max_memory: int | None
    default_cpu: int
    max_cpu: int | None
    pids: int

    @classmethod
    def resolve(cls, limits: LimitsSettings, *, node_memory: int | None, node_cpu_millis: int | None) -> Ceilings:
        """From the settings; unset maxima are the node's memory and CPUs (when known)."""
        return cls(
            default_memory=_bytes(limits.default_memory),
            max_memory=_bytes(limits.max_memory) if limits.max_memory else node_memory,
            default_cpu=_millis(limits.default_cpu),
            max_cpu=_millis(limits.max_cpu) if limits.max_cpu else node_cpu_millis,
            pids=limits.pids,
        )

    def limits_of(self, c: wire.Container) -> tuple[int, int]:
        """(memory limit in bytes, CPU limit in millicores) the container runs with."""
        limits, requests = c.resources.limits, c.resources.requests
        memory = _bytes(limits.get("memory"))
        if memory <= 0:
            memory = max(self.default_memory, _bytes(requests.get("memory")))
        cpu = _millis(limits.get("cpu"))
        if cpu <= 0:
            cpu = max(self.default_cpu, _millis(requests.get("cpu")))
        return memory, cpu

    def violations(self, where: str, c: wire.Container) -> Iterator[tuple[str, str]]:
        """(field, message) for every limit or request above the maxima."""
        for section in ("limits", "requests"):
            values = getattr(c.resources, section)
            if self.max_memory is not None and "memory" in values and _bytes(values["memory"]) > self.max_memory:
                yield (
                    f"{where}.resources.{section}.memory",
                    f"memory {values['memory']} is above this desktop's maximum of {_mem(self.max_memory)} "
                    "per container (limits.max_memory)",
                )
            if self.max_cpu is not None and "cpu" in values and _millis(values["cpu"]) > self.max_cpu:
                yield (
                    f"{where}.resources.{section}.cpu",
                    f"cpu {values['cpu']} is above this desktop's maximum of {_cpu(self.max_cpu)} "
                    "per container (limits.max_cpu)",
                )
