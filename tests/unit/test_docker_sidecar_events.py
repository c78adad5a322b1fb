"""Docker events -> inspects: an event costs an inspect only when no inspect sent after it
already holds its effect (in a burst, the create event arrives before the create's answer)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from kod import labels as kl
from kod import wire
from kod.hub import Hub
from sidecars.docker import naming
from sidecars.docker.record import PodRecord
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState


class FakeEngine:
    """Answers inspects of the infra container; counts them."""

    def __init__(self) -> None:
        self.inspected: list[str] = []

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        self.inspected.append(ref)
        return {"Id": ref, "Name": "/infra", "Config": {"Labels": {naming.ROLE: "infra"}},
                "State": {"Status": "running", "Running": True, "StartedAt": "2026-01-01T12:00:00Z"},
                "NetworkSettings": {"IPAddress": "172.17.0.9"}}


def setup() -> tuple[Runtime, FakeEngine, PodState, list[PodState]]:
    settings = DockerSidecarSettings(name="evt", docker_url="unix:///nonexistent.sock", host_access={"mode": "off"})
    engine = FakeEngine()
    rt = Runtime(settings, engine, Hub(8))  # type: ignore[arg-type]
    kicked: list[PodState] = []
    rt.worker.kick = kicked.append  # type: ignore[method-assign,assignment]
    rec = PodRecord(pod=wire.Pod.model_validate({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                                                 "spec": {"containers": [{"name": "c", "image": "img"}]}}))
    pod = PodState.new(rec, datetime.now(timezone.utc), {})
    rt.table.register(pod)
    return rt, engine, pod, kicked


def event(action: str, cid: str, when: float) -> dict[str, Any]:
    attrs = {kl.D_MANAGED_BY: naming.MANAGED_BY_VALUE, naming.SIDECAR: "evt", kl.D_POD_UID: "u"}
    return {"Type": "container", "Action": action, "timeNano": int(when * 1e9), "Actor": {"ID": cid, "Attributes": attrs}}


async def test_an_event_answered_by_a_later_inspect_costs_no_second_inspect() -> None:
    rt, engine, pod, kicked = setup()
    rt.events.on_event(event("create", "infra", time.time()))  # before the create's answer: unknown id
    assert kicked == [pod]
    pod.infra_id = "infra"
    await rt.worker.refresh_infra(pod)  # the set-up's own inspect, sent after the event
    await rt.worker.refresh(pod)
    assert engine.inspected == ["infra"]


async def test_an_event_after_the_last_inspect_is_inspected() -> None:
    rt, engine, pod, _ = setup()
    pod.infra_id = "infra"
    await rt.worker.refresh_infra(pod)
    rt.events.on_event(event("die", "infra", time.time() + 1))
    await rt.worker.refresh(pod)
    assert engine.inspected == ["infra", "infra"]
    await rt.worker.refresh(pod)  # nothing new
    assert engine.inspected == ["infra", "infra"]


async def test_a_container_marked_stale_is_inspected_whatever_the_events() -> None:
    rt, engine, pod, _ = setup()
    pod.infra_id = "infra"
    await rt.worker.refresh_infra(pod)
    pod.stale.add("infra")  # a start by this process, or a resync
    await rt.worker.refresh(pod)
    assert engine.inspected == ["infra", "infra"]
