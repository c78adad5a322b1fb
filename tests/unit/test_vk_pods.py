"""The pod sync loop against a real (fake) InterLink server and a recording API server: adoption
without restarts, orphan removal, idempotent starts, refusal, graceful deletion, retries of pods
whose Secret appears late, status written from pushed events only, and admission where pods are
first seen and when they are adopted."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from kod import wire
from kod.kube import KubeClient
from kod.kube_config import Connection
from kod.kube_watch import WatchEvent
from tests.unit.vk_fakes import TOKEN, FakeInterLink, FakeKubeApi
from vk_bridge.admission import Admission, NodeFacts as AdmissionFacts
from vk_bridge.events import EventRecorder
from vk_bridge.pods import PodController, WorkQueue
from vk_bridge.provider import InterLinkProvider
from vk_bridge.references import KubeReferences
from vk_bridge.resolve import NodeFacts, Resolver
from vk_bridge.settings import AdmissionSettings, PodSettings

#: The harness's node: owner namespace "ns", 2 cores, 10 pods.
NODE = AdmissionFacts(name="vnode", labels={"kubernetes.io/hostname": "vnode"}, allocatable={"cpu": "2", "memory": "4Gi", "pods": "10"})


def api_pod(name: str, uid: str, *, privileged: bool = False, env: list[dict[str, Any]] | None = None,
            deleting: int | None = None, namespace: str = "ns", cpu: str | None = None,
            created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox", "env": env or []}
    if privileged:
        container["securityContext"] = {"privileged": True}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "creationTimestamp": created}
    if deleting is not None:
        meta.update(deletionTimestamp="2026-01-01T00:00:00Z", deletionGracePeriodSeconds=deleting)
    return {"metadata": meta, "spec": {"nodeName": "vnode", "containers": [container]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}}


class Harness:
    def __init__(self, interlink: FakeInterLink, api: FakeKubeApi, controller: PodController) -> None:
        self.interlink, self.api, self.controller = interlink, api, controller

    def sync(self, *pods: dict[str, Any]) -> None:
        for p in pods:
            self.api.add_pod(p)
        self.controller.on_api_event(WatchEvent("SYNC", objects=tuple(pods)))

    def event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind != "DELETED":
            self.api.add_pod(pod)
        self.controller.on_api_event(WatchEvent(kind, object=pod))  # type: ignore[arg-type]

    def status_of(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        return self.api.pods[(namespace, name)].get("status") or {}


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def harness(aiohttp_server: Callable[..., Any]) -> AsyncIterator[Harness]:
    interlink, api = FakeInterLink(heartbeat=1.0), FakeKubeApi()
    il_server: TestServer = await aiohttp_server(interlink.app)
    api_server: TestServer = await aiohttp_server(api.app)
    kube = KubeClient(Connection(host=str(api_server.make_url("")).rstrip("/"), ssl_context=None, authorization=lambda: None),
                      backoff=(0.01,))
    provider = InterLinkProvider(str(il_server.make_url("")), TOKEN, backoff=(0.01, 0.01))
    resolver = Resolver(KubeReferences(kube), NodeFacts(name="vnode", host_ips=("10.0.0.5",)))
    controller = PodController(
        kube, provider, resolver, EventRecorder(kube, "vnode"), node_name="vnode", host_ips=("10.0.0.5",),
        settings=PodSettings(workers=4, retry_backoff=(0.05,)),
        admission=Admission(AdmissionSettings(owner_namespace="ns"), node_name="vnode", node_user="u", node=lambda: NODE),
    )
    tasks = [asyncio.create_task(controller.run_remote_watch()), asyncio.create_task(controller.run_workers())]
    yield Harness(interlink, api, controller)
    # Cancelled again until they are gone: Python 3.11's asyncio.wait_for can swallow a
    # cancellation that arrives just as the wait it guards completes, and a loop around it then
    # goes on (the teardown hung on a loaded machine).
    for _ in range(100):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
    await provider.close()
    await kube.close()


def request_for(pod: dict[str, Any]) -> wire.PodCreateRequest:
    return wire.PodCreateRequest(pod=wire.Pod.model_validate(pod))


async def test_on_start_running_pods_are_adopted_and_orphans_removed(harness: Harness) -> None:
    kept = api_pod("kept", "u-kept")
    harness.interlink.adopt(request_for(kept))
    harness.interlink.adopt(request_for(api_pod("orphan", "u-orphan")))
    await until(lambda: harness.controller.remote_synced.is_set())
    assert not harness.interlink.deletes  # nothing happens before the API side is listed
    harness.sync(kept)
    await until(lambda: harness.status_of("kept").get("phase") == "Running")
    await until(lambda: harness.interlink.deletes == [("u-orphan", 0)])
    assert harness.interlink.creates == 0  # the running pod was not started again
    assert set(harness.interlink.pods) == {"u-kept"}


async def test_a_new_pod_is_started_once_and_its_status_written(harness: Harness) -> None:
    harness.sync()
    p = api_pod("web", "u1")
    harness.event("ADDED", p)
    harness.event("MODIFIED", p)
    await until(lambda: harness.status_of("web").get("phase") == "Running")
    assert harness.interlink.creates == 1
    st = harness.status_of("web")
    assert st["podIP"] == "172.17.0.42" and st["hostIP"] == "10.0.0.5"
    assert harness.interlink.request_ids[0]  # a request id travels with the create
    # A pushed change is written back, with no polling involved.
    harness.interlink.finish("u1", 3)
    await until(lambda: harness.status_of("web").get("phase") == "Failed")
    assert harness.status_of("web")["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


async def test_status_is_not_rewritten_when_nothing_changed(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: harness.status_of("web").get("phase") == "Running")
    await until(lambda: len(harness.controller.queue) == 0)
    patches = len(harness.api.patches)
    for _ in range(3):
        harness.controller.queue.add("u1")
    await asyncio.sleep(0.2)
    assert len(harness.api.patches) == patches


async def test_a_refused_pod_fails_with_the_reason_and_an_event(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("evil", "u-evil", privileged=True))
    await until(lambda: harness.status_of("evil").get("phase") == "Failed")
    st = harness.status_of("evil")
    assert st["reason"] == "Forbidden" and "privileged" in st["message"]
    assert not harness.interlink.pods
    await until(lambda: any(e["reason"] == "Forbidden" for e in harness.api.events))


async def test_deletion_honours_the_grace_period_then_removes_the_object(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: "u1" in harness.interlink.pods)
    harness.event("MODIFIED", api_pod("web", "u1", deleting=7))
    await until(lambda: ("ns", "web") not in harness.api.pods)
    assert harness.interlink.deletes == [("u1", 7)]
    path, body = harness.api.deletes[0]
    assert path == "/api/v1/namespaces/ns/pods/web"
    assert body["gracePeriodSeconds"] == 0 and body["preconditions"] == {"uid": "u1"}


async def test_the_object_stays_until_interlink_really_deleted_the_containers(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: "u1" in harness.interlink.pods)
    harness.interlink.failing_deletes = 2
    harness.event("MODIFIED", api_pod("web", "u1", deleting=0))
    await until(lambda: harness.interlink.failing_deletes == 0)
    assert ("ns", "web") in harness.api.pods  # still Terminating: its containers still exist
    await until(lambda: ("ns", "web") not in harness.api.pods)
    assert "u1" not in harness.interlink.pods


async def test_a_force_deleted_pod_is_removed_from_interlink(harness: Harness) -> None:
    harness.sync()
    p = api_pod("web", "u1")
    harness.event("ADDED", p)
    await until(lambda: "u1" in harness.interlink.pods)
    harness.event("DELETED", p)
    await until(lambda: harness.interlink.deletes == [("u1", 0)])


async def test_a_pod_waits_for_its_secret_and_starts_when_it_appears(harness: Harness) -> None:
    harness.sync()
    env = [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "late", "key": "pw"}}}]
    harness.event("ADDED", api_pod("late", "u-late", env=env))
    await until(lambda: (harness.status_of("late").get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason")
                == "CreateContainerConfigError")
    assert 'secret "late" not found' in harness.status_of("late")["containerStatuses"][0]["state"]["waiting"]["message"]
    harness.api.secrets[("ns", "late")] = {"data": {"pw": base64.b64encode(b"hunter2").decode()}}
    await until(lambda: harness.status_of("late").get("phase") == "Running", timeout=5)
    [env_var] = harness.interlink.requests["u-late"].containers[0].env
    assert (env_var.name, env_var.value) == ("PW", "hunter2")


async def test_a_missing_secret_is_reported_once_even_when_the_first_status_write_fails(harness: Harness) -> None:
    harness.sync()
    harness.api.failing_status_patches = 3  # more than the client's own retries: the sync fails
    env = [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "pw"}}}]
    harness.event("ADDED", api_pod("gone", "u-gone", env=env))
    await until(lambda: (harness.status_of("gone").get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason")
                == "CreateContainerConfigError")
    await until(lambda: any(e["reason"] == "Failed" for e in harness.api.events))
    for _ in range(3):  # more retries, same missing Secret: still one event
        harness.controller.queue.add("u-gone")
        await asyncio.sleep(0.05)
    await harness.controller.events.drain()
    assert [e["reason"] for e in harness.api.events].count("Failed") == 1
    assert 'secret "gone" not found' in next(e["message"] for e in harness.api.events if e["reason"] == "Failed")


async def test_interlink_restart_resyncs_without_duplicates(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: harness.status_of("web").get("phase") == "Running")
    # The pod finishes while InterLink restarts: no event says so, only the new stream's SYNC.
    harness.interlink.finish("u1", 0, push=False)
    harness.interlink.break_watches()
    await until(lambda: harness.status_of("web").get("phase") == "Succeeded")
    assert harness.interlink.creates == 1


async def test_work_queue_never_runs_a_key_twice_at_once() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    key = await q.get()
    q.add("a")  # changed while being processed: runs again afterwards, not concurrently
    assert q._queue.qsize() == 0
    q.done(key)
    assert await asyncio.wait_for(q.get(), 1) == "a"


# --- admission ------------------------------------------------------------------------------------


async def test_a_pod_of_another_namespace_fails_with_the_reason_and_nothing_is_created(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("intruder", "u-x", namespace="other"))
    await until(lambda: harness.status_of("intruder", "other").get("phase") == "Failed")
    st = harness.status_of("intruder", "other")
    assert st["reason"] == "NotAllowedByOwner" and "other/intruder" in st["message"]
    await until(lambda: any(e["reason"] == "NotAllowedByOwner" for e in harness.api.events))
    # Its object stays (Failed, like a pod the kubelet rejects); nothing reached InterLink.
    await asyncio.sleep(0.2)
    assert harness.interlink.creates == 0 and not harness.interlink.pods
    assert ("other", "intruder") in harness.api.pods


async def test_resources_are_those_of_admitted_pods_that_have_not_ended(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("big", "u-big", cpu="1500m"))
    await until(lambda: harness.status_of("big").get("phase") == "Running")
    harness.event("ADDED", api_pod("second", "u-2", cpu="1"))
    await until(lambda: harness.status_of("second").get("phase") == "Failed")
    assert harness.status_of("second")["reason"] == "OutOfcpu"
    assert harness.status_of("second")["message"] == "Node didn't have enough resource: cpu, requested: 1000, used: 1500, capacity: 2000"
    # Once the big one ended, its room is free again.
    harness.interlink.finish("u-big", 0)
    await until(lambda: harness.status_of("big").get("phase") == "Succeeded")
    harness.event("ADDED", api_pod("third", "u-3", cpu="1"))
    await until(lambda: harness.status_of("third").get("phase") == "Running")
    assert set(harness.interlink.requests) == {"u-big", "u-3"}


async def test_adopted_pods_are_admitted_again_oldest_first_and_a_refused_one_is_stopped(harness: Harness) -> None:
    """After a restart (here: the first sync), running pods are re-checked: a pod of a namespace
    the owner no longer allows is stopped and Failed; of two that no longer fit together, the
    younger is."""
    own = api_pod("own", "u-own", cpu="1500m", created="2026-01-01T00:00:00Z")
    younger = api_pod("younger", "u-young", cpu="1", created="2026-01-02T00:00:00Z")
    stranger = api_pod("stranger", "u-s", namespace="other", created="2025-12-01T00:00:00Z")
    for p in (own, younger, stranger):
        harness.interlink.adopt(request_for(p))
    await until(lambda: harness.controller.remote_synced.is_set())
    harness.sync(younger, stranger, own)
    await until(lambda: harness.status_of("stranger", "other").get("phase") == "Failed")
    await until(lambda: harness.status_of("younger").get("phase") == "Failed")
    assert harness.status_of("stranger", "other")["reason"] == "NotAllowedByOwner"
    assert harness.status_of("younger")["reason"] == "OutOfcpu"
    await until(lambda: set(harness.interlink.pods) == {"u-own"})
    assert sorted(uid for uid, _ in harness.interlink.deletes) == ["u-s", "u-young"]
    await until(lambda: harness.status_of("own").get("phase") == "Running")
    assert harness.interlink.creates == 0


async def test_events_the_sidecar_reports_become_one_counted_event_each(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: harness.status_of("web").get("phase") == "Running")
    now = datetime.now(UTC)
    unhealthy = wire.PodEvent(type="Warning", reason="Unhealthy", message="Readiness probe failed: no",
                              firstTimestamp=now, lastTimestamp=now)
    harness.interlink.set_status("u1", events=[unhealthy])
    await until(lambda: any(e["reason"] == "Unhealthy" for e in harness.api.events))
    (event,) = [e for e in harness.api.events if e["reason"] == "Unhealthy"]
    assert event["type"] == "Warning" and event["count"] == 1 and event["involvedObject"]["uid"] == "u1"
    again = unhealthy.model_copy(update={"count": 3})
    harness.interlink.set_status("u1", events=[again])
    await until(lambda: event["count"] == 3)  # the same Event, patched: one series, counted
    assert [e["reason"] for e in harness.api.events].count("Unhealthy") == 1
    # A restarted virtual kubelet that reports it again changes nothing (same name: patched).
    harness.controller._event_counts.clear()
    killing = wire.PodEvent(type="Normal", reason="Killing", message="Container main failed liveness probe, will be restarted",
                            firstTimestamp=now, lastTimestamp=now)
    harness.interlink.set_status("u1", events=[again, killing])
    await until(lambda: any(e["reason"] == "Killing" for e in harness.api.events))
    assert [e["reason"] for e in harness.api.events].count("Unhealthy") == 1 and event["count"] == 3


async def test_a_pod_flooding_events_is_held_to_the_kubelets_spam_filter(harness: Harness) -> None:
    harness.sync()
    harness.event("ADDED", api_pod("web", "u1"))
    await until(lambda: harness.status_of("web").get("phase") == "Running")
    now = datetime.now(UTC)
    for n in range(1, 41):  # 40 distinct failures, as a probe whose output changes every time
        failed = wire.PodEvent(type="Warning", reason="Unhealthy", message=f"Readiness probe failed: {n}",
                               firstTimestamp=now, lastTimestamp=now)
        harness.interlink.set_status("u1", events=[failed])
        await until(lambda: len(harness.controller.queue) == 0)
        await asyncio.sleep(0.01)
    await harness.controller.events.drain()
    await asyncio.sleep(0.2)
    assert len([e for e in harness.api.events if e["reason"] == "Unhealthy"]) == 25
