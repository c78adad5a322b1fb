"""Live volumes in vk_bridge: projected tokens refreshed by the kubelet's rule (token_manager.py)
and changed contents sent to the provider (live_volumes.py), against a fake provider only."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

import pytest

from kod import errors, wire
from vk_bridge.live_volumes import LiveVolumes, references, running_pods
from vk_bridge.resolve import NodeFacts, Resolver
from vk_bridge.token_manager import Token, TokenKey, TokenManager

KEY = TokenKey("ns", "default", (), 600, "p", "uid-1")


def test_a_token_is_refreshed_after_80_percent_of_its_lifetime_not_before() -> None:
    now = [1000.0]
    issued: list[float] = []

    async def request(key: TokenKey) -> Token:
        issued.append(now[0])
        return Token(token=f"t{len(issued)}", expires_at=now[0] + key.expiration_seconds, lifetime_seconds=key.expiration_seconds)

    tokens = TokenManager(request, clock=lambda: now[0], jitter=lambda: 0.0)

    async def go() -> list[str]:
        out = [await tokens.get(KEY)]
        now[0] += 479  # 79.8 % of 600 s
        out.append(await tokens.get(KEY))
        now[0] += 2  # past 480 s
        out.append(await tokens.get(KEY))
        return out

    assert asyncio.run(go()) == ["t1", "t1", "t2"]
    assert issued == [1000.0, 1481.0]


def test_a_long_token_is_refreshed_after_24_hours_and_a_lower_fraction_sooner() -> None:
    day = TokenKey("ns", "default", (), 10 * 86400, "p", "uid-1")
    tok = Token("t", expires_at=10 * 86400.0, lifetime_seconds=10 * 86400.0)
    assert TokenManager(lambda k: None, clock=lambda: 86400.0 + 1, jitter=lambda: 0.0).requires_refresh(tok)  # type: ignore[arg-type,return-value]
    assert not TokenManager(lambda k: None, clock=lambda: 86400.0 - 1, jitter=lambda: 0.0).requires_refresh(tok)  # type: ignore[arg-type,return-value]
    short = Token("t", expires_at=600.0, lifetime_seconds=600.0)
    assert TokenManager(lambda k: None, refresh_fraction=0.05, clock=lambda: 31.0, jitter=lambda: 0.0).requires_refresh(short)  # type: ignore[arg-type,return-value]
    assert day.expiration_seconds == 10 * 86400


class FakeRefs:
    def __init__(self) -> None:
        self.cms: dict[str, Mapping[str, Any]] = {"cfg": {"metadata": {"name": "cfg"}, "data": {"k": "v1"}}}

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def config_map(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.cms.get(name)

    async def service_account_token(self, namespace: str, service_account: str, **kw: Any) -> str:
        return "tok"

    async def services(self, namespace: str) -> list[Mapping[str, Any]]:
        return []

    async def persistent_volume_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


class FakeProvider:
    def __init__(self) -> None:
        self.updates: list[wire.VolumeUpdate] = []
        self.fail: errors.KodError | None = None

    async def update_volumes(self, namespace: str, name: str, update: wire.VolumeUpdate) -> wire.VolumeUpdateResult:
        if self.fail:
            raise self.fail
        self.updates.append(update)
        return wire.VolumeUpdateResult(updated=[v.name for v in update.volumes])


POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1"},
    "spec": {"containers": [{"name": "c"}], "volumes": [
        {"name": "cm", "configMap": {"name": "cfg"}},
        {"name": "opt", "configMap": {"name": "maybe", "optional": True}},
        {"name": "e", "emptyDir": {}},
    ]},
}


def _live(refs: FakeRefs, provider: FakeProvider) -> LiveVolumes:
    resolver = Resolver(refs, NodeFacts(name="n", host_ips=("10.0.0.1",)))
    running = {"uid-1": POD}
    return LiveVolumes(None, provider, resolver, refs, TokenManager(lambda k: None),  # type: ignore[arg-type]
                       running=lambda: running, known=lambda: running.keys())


def _value(update: wire.VolumeUpdate, volume: str) -> dict[str, str]:
    rv = next(v for v in update.volumes if v.name == volume)
    return {f.path: base64.b64decode(f.data).decode() for f in rv.files}


def test_changed_contents_are_sent_once_and_a_missing_source_keeps_the_files() -> None:
    refs, provider = FakeRefs(), FakeProvider()
    live = _live(refs, provider)
    live._follow = lambda wanted: None  # type: ignore[method-assign]  # no watches: GETs from refs

    async def go() -> None:
        await live.resync()
        assert [v.name for v in provider.updates[0].volumes] == ["cm", "opt"]
        await live.resync()
        assert len(provider.updates) == 1, "nothing changed: nothing sent"
        refs.cms["cfg"] = {"metadata": {"name": "cfg"}, "data": {"k": "v2"}}
        await live.resync()
        assert [v.name for v in provider.updates[1].volumes] == ["cm"]
        assert _value(provider.updates[1], "cm") == {"k": "v2"}
        refs.cms["maybe"] = {"metadata": {"name": "maybe"}, "data": {"o": "1"}}
        await live.resync()
        assert _value(provider.updates[2], "opt") == {"o": "1"}
        del refs.cms["cfg"]  # non-optional and deleted: the kubelet keeps the files
        await live.resync()
        assert len(provider.updates) == 3

    asyncio.run(go())


@pytest.mark.parametrize("failure, resent", [(errors.InvalidInput("no"), False), (errors.Unavailable("later"), True)])
def test_a_refusal_is_not_retried_but_unavailability_is(failure: errors.KodError, resent: bool) -> None:
    refs, provider = FakeRefs(), FakeProvider()
    live = _live(refs, provider)
    live._follow = lambda wanted: None  # type: ignore[method-assign]

    async def go() -> None:
        provider.fail = failure
        await live.resync()
        provider.fail = None
        await live.resync()

    asyncio.run(go())
    assert bool(provider.updates) is resent


def test_only_running_pods_and_their_references_are_followed() -> None:
    remote = {"a": wire.PodStatus.model_construct(phase="Running"), "b": wire.PodStatus.model_construct(phase="Succeeded")}
    pods = {"a": POD, "b": POD, "c": POD, "d": {"metadata": {"deletionTimestamp": "x"}}}
    assert set(running_pods(pods, remote)) == {"a"}
    projected = {"metadata": {"namespace": "ns"}, "spec": {"volumes": [{"name": "p", "projected": {"sources": [
        {"secret": {"name": "s"}}, {"configMap": {"name": "c"}}, {"serviceAccountToken": {"path": "t"}}]}},
        {"name": "s2", "secret": {"secretName": "s2"}}]}}
    assert references(projected) == {("secrets", "ns", "s"), ("configmaps", "ns", "c"), ("secrets", "ns", "s2")}


@pytest.mark.timeout(10)
def test_a_pod_that_starts_running_is_resolved_without_waiting_for_the_resync() -> None:
    # Its objects are watched from its first round on: a change made right after the pod started
    # must not wait for the periodic resync (30 s here).
    refs, provider = FakeRefs(), FakeProvider()
    resolver = Resolver(refs, NodeFacts(name="n", host_ips=("10.0.0.1",)))
    running: dict[str, Any] = {}
    live = LiveVolumes(None, provider, resolver, refs, TokenManager(lambda k: None),  # type: ignore[arg-type]
                       running=lambda: running, known=lambda: running.keys(), resync_seconds=30)
    live._follow = lambda wanted: None  # type: ignore[method-assign]

    async def go() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(live.run())
        await asyncio.sleep(0.1)
        assert not provider.updates
        running["uid-1"] = POD
        start = loop.time()
        while not provider.updates:
            await asyncio.sleep(0.05)
        task.cancel()
        return loop.time() - start

    assert asyncio.run(go()) < 5
