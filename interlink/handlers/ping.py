# GET /v1/ping
#   Request: no body.
#   Response: 200 NodeInfo: capacity and allocatable summed over the sidecars that answer, their
#   taints and labels merged, and `sidecars`: one SidecarHealth per configured sidecar.
#   Status codes: 200 when at least one sidecar answers; 401 bad token; 503 when none answers.
"""Ping: the node as the sum of its sidecars."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiohttp import web

from kod import __version__, errors, quantity
from kod.http import json_model
from kod.wire import NodeInfo, SidecarHealth, Taint

from interlink.state import SETTINGS, SIDECARS


def merge(infos: list[NodeInfo]) -> NodeInfo:
    """One NodeInfo from several: quantities summed, taints de-duplicated, labels merged (the
    first sidecar in config order wins a conflict)."""
    capacity: dict[str, list[str]] = defaultdict(list)
    allocatable: dict[str, list[str]] = defaultdict(list)
    taints: list[Taint] = []
    labels: dict[str, str] = {}
    for info in infos:
        for name, value in info.capacity.items():
            capacity[name].append(value)
        for name, value in info.allocatable.items():
            allocatable[name].append(value)
        for taint in info.taints:
            if taint not in taints:
                taints.append(taint)
        for key, value in info.labels.items():
            labels.setdefault(key, value)
    return NodeInfo(
        capacity={k: quantity.add(v) for k, v in sorted(capacity.items())},
        allocatable={k: quantity.add(v) for k, v in sorted(allocatable.items())},
        taints=taints,
        labels=labels,
        version=f"kod-interlink/{__version__}",
    )


async def ping(request: web.Request) -> web.Response:
    timeout = request.app[SETTINGS].ping_timeout_seconds
    sidecars = list(request.app[SIDECARS].by_name.values())
    results = await asyncio.gather(
        *(s.api.call("GET", "/v1/ping", NodeInfo, timeout=timeout) for s in sidecars), return_exceptions=True
    )
    answered: list[NodeInfo] = []
    health: list[SidecarHealth] = []
    for sidecar, result in zip(sidecars, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, errors.KodError):
                raise result
            health.append(SidecarHealth(name=sidecar.name, ok=False, message=str(result)))
            continue
        info = result[1]
        try:
            for value in [*info.capacity.values(), *info.allocatable.values()]:
                quantity.parse(value)
        except errors.InvalidInput as exc:
            # The sidecar's mistake, not the caller's: leave it out rather than answer 400.
            health.append(SidecarHealth(name=sidecar.name, ok=False, message=f"bad capacity: {exc}"))
            continue
        answered.append(info)
        link = sidecar.health
        note = None if link.connected else f"status stream down: {link.error}"
        health.append(SidecarHealth(name=sidecar.name, ok=True, message=note))
    if not answered:
        problems = "; ".join(h.message or h.name for h in health)
        raise errors.Unavailable(f"no sidecar answers: {problems}")
    info = merge(answered)
    info.sidecars = health
    return json_model(info)
