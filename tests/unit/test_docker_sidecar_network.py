"""The pods' own network (sidecars/docker/network.py): created and owned by the sidecar, re-created
when removed, no traffic between pods, and host rules that keep pods from the desktop's services.
The engine is the in-memory fake; host commands go to the recorder of tests/unit/conftest.py (the
real rules are attacked in tests/e2e/test_security_network.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kod import errors, wire
from kod.hub import Hub
from sidecars.docker import naming, network
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings, HostAllow, NetworkSettings
from tests.unit.conftest import HostCommands
from tests.unit.docker_sidecar_fake_engine import FakeEngine

pytestmark = pytest.mark.timeout(30)


def settings(**net: Any) -> DockerSidecarSettings:
    return DockerSidecarSettings(name="net", docker_url="unix:///nonexistent.sock", ready_timeout_seconds=5,
                                 network=NetworkSettings(**net))


def request(uid: str = "u-1") -> wire.PodCreateRequest:
    return wire.PodCreateRequest.model_validate({"pod": {
        "metadata": {"name": "web", "namespace": "ns", "uid": uid},
        "spec": {"containers": [{"name": "main", "image": "img"}], "restartPolicy": "Always"}}})


def test_the_network_is_a_bridge_of_its_own_without_traffic_between_pods() -> None:
    body = network.create_body(settings(subnet="10.213.0.0/24"))
    assert body["Name"] == "kod-net-pods" and body["Driver"] == "bridge"
    options: Any = body["Options"]
    assert options["com.docker.network.bridge.enable_icc"] == "false"
    assert len(options["com.docker.network.bridge.name"]) <= 15
    assert body["IPAM"] == {"Driver": "default", "Config": [{"Subnet": "10.213.0.0/24"}]}
    labels: Any = body["Labels"]
    assert labels[naming.SIDECAR] == "net" and labels[naming.ROLE] == network.L_ROLE_NETWORK


def test_the_input_chain_lets_pods_reach_only_what_is_allowed() -> None:
    rules = network.input_rules(settings(host_allow=["tcp/6443", "tcp/192.0.2.2:30000-32767", "udp/53"]))
    text = [" ".join(r) for r in rules]
    assert "ESTABLISHED,RELATED" in text[0]
    assert text[1].endswith("-p tcp --dport 6443 -j ACCEPT")
    assert "-p tcp -d 192.0.2.2 --dport 30000:32767 -j ACCEPT" in text[2]
    assert "-p udp --dport 53 -j ACCEPT" in text[3]
    assert text[-2].endswith("-p tcp -j REJECT --reject-with tcp-reset")
    assert text[-1].endswith("-j REJECT --reject-with icmp-port-unreachable")


@pytest.mark.parametrize("bad", ["6443", "tcp/", "tcp/host:80", "icmp/1", "tcp/1.2.3:80"])
def test_a_bad_allowed_destination_is_refused_with_its_form(bad: str) -> None:
    with pytest.raises(ValidationError):
        NetworkSettings(host_allow=[bad])


def test_the_default_allows_only_cloudifys_forward_range() -> None:
    assert [str(a) for a in NetworkSettings().host_allow] == ["tcp/39400-39499"]
    assert str(HostAllow.model_validate("tcp/10.0.0.1:6443")) == "tcp/10.0.0.1:6443"


async def test_the_runtime_creates_the_network_and_its_host_rules_before_any_pod(host_commands: HostCommands) -> None:
    host_commands.fail["-C INPUT"] = (1, "Bad rule (does a matching rule exist in that chain?)")
    engine = FakeEngine()
    rt = Runtime(settings(), engine, Hub(8))  # type: ignore[arg-type]
    await rt.start()
    try:
        assert "kod-net-pods" in engine.networks
        lines = [" ".join(a) for a in host_commands.argv]
        chain = network.chain_name(rt.settings)
        bridge = network.bridge_name(rt.settings)
        assert f"iptables -w -N {chain}" in lines and f"iptables -w -I INPUT 1 -i {bridge} -j {chain}" in lines
        status, created = await rt.create(request())
        assert created and status.phase == "Running"
        (infra,) = [c for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == "infra"]
        assert infra["NetworkMode"] == "kod-net-pods"
    finally:
        await rt.stop()


async def test_a_removed_network_is_created_again_at_the_next_pod() -> None:
    engine = FakeEngine()
    rt = Runtime(settings(), engine, Hub(8))  # type: ignore[arg-type]
    await rt.start()
    try:
        engine.networks.clear()  # `docker network rm` while no pod uses it
        original = engine.create_container

        async def create(name: str, body: dict[str, Any]) -> str:
            if body["HostConfig"].get("NetworkMode") not in engine.networks and "POD" in name:
                from sidecars.docker.engine import EngineError
                raise EngineError(404, f"network {body['HostConfig']['NetworkMode']} not found")
            return await original(name, body)

        engine.create_container = create  # type: ignore[method-assign]
        status, created = await rt.create(request())
        assert created and status.phase == "Running" and "kod-net-pods" in engine.networks
    finally:
        await rt.stop()


async def test_a_network_of_that_name_that_is_not_ours_is_never_used() -> None:
    engine = FakeEngine()
    engine.networks["kod-net-pods"] = {"Id": "x", "Name": "kod-net-pods", "Labels": {}, "Options": {}, "Containers": {}}
    net = network.PodNetwork(settings(), engine)  # type: ignore[arg-type]
    with pytest.raises(errors.Unavailable, match="not this sidecar's pod network"):
        await net.ensure()


async def test_host_rules_on_refuses_to_start_when_they_cannot_be_installed(host_commands: HostCommands) -> None:
    host_commands.fail["-C INPUT"] = (1, "Bad rule")
    host_commands.fail["-I INPUT"] = (4, "iptables: Permission denied")
    net = network.PodNetwork(settings(host_rules="on"), FakeEngine())  # type: ignore[arg-type]
    with pytest.raises(network.HostRulesMissing, match="pods can reach services listening on this desktop"):
        await net.ensure()
    relaxed = network.PodNetwork(settings(host_rules="auto"), FakeEngine())  # type: ignore[arg-type]
    await relaxed.ensure()  # warned about, and said so
    assert relaxed.host_rules is False and "Permission denied" in relaxed.problem


async def test_pods_addresses_are_pinned_and_stale_pins_removed(host_commands: HostCommands) -> None:
    engine = FakeEngine()
    net = network.PodNetwork(settings(), engine)  # type: ignore[arg-type]
    await net.ensure()
    engine.networks["kod-net-pods"]["Containers"] = {
        "c1": {"IPv4Address": "172.30.0.2/16", "MacAddress": "02:42:ac:1e:00:02"}}
    host_commands.fail["neigh show"] = (0, "172.30.0.2 lladdr 02:42:ac:1e:00:02 PERMANENT\n172.30.0.9 lladdr 02:42:ac:1e:00:09 PERMANENT")
    await net.protect_all()
    lines = [" ".join(a) for a in host_commands.argv]
    assert f"pin {net.bridge} 172.30.0.2 02:42:ac:1e:00:02" in lines
    assert f"ip neigh del 172.30.0.9 dev {net.bridge}" in lines
    assert not any("del 172.30.0.2" in line for line in lines)
