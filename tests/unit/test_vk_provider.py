"""The InterLink provider against a real (fake) InterLink server on a free port: idempotent create,
policy refusal, deletion, logs, token errors, and a watch that reconnects with a fresh SYNC; and
the provider interface split by caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kod import errors, wire
from tests.unit.vk_fakes import TOKEN, FakeInterLink
from vk_bridge import kubelet_api, node, pods
from vk_bridge.provider import (
    ContainerLogs,
    InterLinkProvider,
    LogsSource,
    NodeProvider,
    PodLifecycle,
    PodSync,
    Provider,
    StatusNotifier,
)


def create_request(uid: str = "u1", name: str = "p1", privileged: bool = False) -> wire.PodCreateRequest:
    container: dict[str, object] = {"name": "c", "image": "busybox"}
    if privileged:
        container["securityContext"] = {"privileged": True}
    return wire.PodCreateRequest(
        pod=wire.Pod.model_validate({"metadata": {"name": name, "namespace": "ns", "uid": uid}, "spec": {"containers": [container]}})
    )


@pytest.fixture
async def interlink(aiohttp_server: Callable[..., object]) -> AsyncIterator[tuple[FakeInterLink, TestServer]]:
    fake = FakeInterLink(heartbeat=0.2)
    server = await aiohttp_server(fake.app)  # type: ignore[misc]
    yield fake, server


@pytest.fixture
async def provider(interlink: tuple[FakeInterLink, TestServer]) -> AsyncIterator[InterLinkProvider]:
    _, server = interlink
    p = InterLinkProvider(str(server.make_url("")), TOKEN, backoff=(0.05, 0.05))
    yield p
    await p.close()


async def test_the_interlink_provider_satisfies_every_protocol() -> None:
    p = InterLinkProvider("http://127.0.0.1:1", None)
    for protocol in (Provider, PodLifecycle, StatusNotifier, NodeProvider, ContainerLogs, PodSync, LogsSource):
        assert isinstance(p, protocol), protocol.__name__
    await p.close()


def _methods(protocol: type) -> set[str]:
    """A protocol's members: its methods and its declared attributes, inherited ones included."""
    declared = {name for cls in protocol.__mro__ for name in getattr(cls, "__annotations__", {})}
    return {name for name in dir(protocol) if not name.startswith("_")} | declared


def test_each_caller_gets_only_the_methods_it_uses() -> None:
    """The split by caller: the pod controller cannot ping, the node cannot create pods, the
    kubelet API cannot delete them; and every method of the whole is some caller's."""
    assert _methods(PodSync) == {"create_pod", "delete_pod", "get_pod_status", "watch"}
    assert _methods(NodeProvider) == {"ping", "url"}
    assert _methods(LogsSource) == {"create_pod", "delete_pod", "get_pod_status", "logs"}
    assert _methods(Provider) == _methods(PodSync) | _methods(NodeProvider) | _methods(LogsSource) | {"close"}
    hints = {
        pods.PodController.__init__: "PodSync",
        node.NodeController.__init__: "NodeProvider",
        kubelet_api.create_app: "LogsSource",
    }
    for function, protocol in hints.items():
        assert function.__annotations__["provider"] == protocol, function.__qualname__


async def test_a_sync_larger_than_aiohttps_line_limit_arrives_whole(
    interlink: tuple[FakeInterLink, TestServer], provider: InterLinkProvider
) -> None:
    fake, _ = interlink
    for i in range(400):  # ~400 pods: a SYNC line of several hundred KiB
        fake.adopt(create_request(uid=f"u{i}", name=f"pod-{i}-" + "x" * 200))
    events: asyncio.Queue[wire.WatchEvent] = asyncio.Queue()
    task = asyncio.create_task(provider.watch(events.put_nowait))
    try:
        sync = await asyncio.wait_for(events.get(), 5)
        assert sync.type == "SYNC" and len(sync.pods or []) == 400
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_repeated_create_returns_the_pods_current_status(interlink: tuple[FakeInterLink, TestServer],
                                                                  provider: InterLinkProvider) -> None:
    fake, _ = interlink
    request = create_request()
    first = await provider.create_pod(request)
    assert fake.requests["u1"] == request  # what InterLink got is the request as given
    fake.finish("u1", 0)  # the pod moved on meanwhile
    again = await provider.create_pod(request)  # a resend (the virtual kubelet restarted, say)
    # InterLink's answer to a known uid comes back as it is: the pod's status now, not the first answer.
    assert (again.uid, again.phase, again.version) == ("u1", "Succeeded", first.version + 1)
    assert fake.creates == 1


async def test_refused_pod_raises_forbidden_with_the_reason(provider: InterLinkProvider) -> None:
    with pytest.raises(errors.Forbidden, match="privileged"):
        await provider.create_pod(create_request(privileged=True))


async def test_delete_twice_is_fine(interlink: tuple[FakeInterLink, TestServer], provider: InterLinkProvider) -> None:
    fake, _ = interlink
    await provider.create_pod(create_request())
    final = await provider.delete_pod("ns", "p1", "u1", grace_period_seconds=5)
    assert final is not None and fake.deletes == [("u1", 5)]
    assert await provider.delete_pod("ns", "p1", "u1", grace_period_seconds=5) is None


async def test_logs_stream_and_unknown_container(provider: InterLinkProvider) -> None:
    await provider.create_pod(create_request())
    chunks = [c async for c in provider.logs("ns", "p1", "c", wire.LogOptions(follow=True))]
    assert b"".join(chunks).decode().splitlines() == ["hello from c", "follow 0", "follow 1", "follow 2"]
    with pytest.raises(errors.NotFound):
        async for _ in provider.logs("ns", "p1", "nope", wire.LogOptions()):
            pass


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_missing_or_wrong_token_is_unauthorized(interlink: tuple[FakeInterLink, TestServer], token: str | None) -> None:
    _, server = interlink
    p = InterLinkProvider(str(server.make_url("")), token, backoff=())
    try:
        with pytest.raises(errors.Unauthorized):
            await p.get_pod_status("ns", "p1")
    finally:
        await p.close()


async def test_unreachable_interlink_is_unavailable_after_retries() -> None:
    p = InterLinkProvider("http://127.0.0.1:9", TOKEN, backoff=(0.01, 0.01))
    try:
        with pytest.raises(errors.Unavailable, match="InterLink at http://127.0.0.1:9 cannot be reached"):
            await p.ping()
        with pytest.raises(errors.Unavailable) as caught:
            await p.get_pod_status("ns", "p1")
        assert caught.value.hint and "kod-interlink" in caught.value.hint
    finally:
        await p.close()


async def test_watch_pushes_status_and_resyncs_after_a_broken_stream(
    interlink: tuple[FakeInterLink, TestServer], provider: InterLinkProvider
) -> None:
    fake, _ = interlink
    events: asyncio.Queue[wire.WatchEvent] = asyncio.Queue()
    connected = asyncio.Event()
    task = asyncio.create_task(provider.watch(events.put_nowait, connected=connected))
    try:
        first = await asyncio.wait_for(events.get(), 5)
        assert first.type == "SYNC" and first.pods == []
        assert connected.is_set()
        await provider.create_pod(create_request())
        pushed = await asyncio.wait_for(events.get(), 5)
        assert pushed.type == "STATUS" and pushed.pod is not None and pushed.pod.uid == "u1"
        heartbeat = await asyncio.wait_for(events.get(), 5)
        assert heartbeat.type == "HEARTBEAT"
        fake.break_watches()
        again = await asyncio.wait_for(_next_of_type(events, "SYNC"), 5)
        assert [p.uid for p in again.pods or []] == ["u1"]
        assert connected.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _next_of_type(events: asyncio.Queue[wire.WatchEvent], kind: str) -> wire.WatchEvent:
    while True:
        event = await events.get()
        if event.type == kind:
            return event


async def test_watch_treats_a_silent_stream_as_dead(aiohttp_server: Callable[..., object]) -> None:
    """A stream that neither sends events nor heartbeats is abandoned and reopened."""
    opened = 0

    async def silent(request: web.Request) -> web.StreamResponse:
        nonlocal opened
        opened += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(wire.WatchEvent(type="SYNC", pods=[]).model_dump_json().encode() + b"\n")
        await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_get("/v1/watch", silent)
    server = await aiohttp_server(app)  # type: ignore[misc]
    p = InterLinkProvider(str(server.make_url("")), None, backoff=(0.01,), watch_idle_seconds=0.2)
    connected = asyncio.Event()
    task = asyncio.create_task(p.watch(lambda e: None, connected=connected))
    try:
        await asyncio.wait_for(connected.wait(), 5)
        for _ in range(100):
            if opened >= 2:
                break
            await asyncio.sleep(0.05)
        assert opened >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await p.close()
