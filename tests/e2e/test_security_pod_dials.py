"""What a pod asks the Docker sidecar to dial for it (httpGet and tcpSocket probes, httpGet
hooks, port-forward) never reaches the desktop's own services: attacked end to end, kubectl
against the real cluster, vk_bridge -> interlink -> the Docker sidecar -> the real Docker engine.

The desktop runs a service on 127.0.0.1 (and one on every address, for its LAN address) that
answers a secret line and counts who connects. A pod of the owner's namespace names them as its
probes' and hooks' `host` and port: the sidecar dials from inside the pod's own network namespace
(sidecars/docker/netns.py), so 127.0.0.1 is the pod's own loopback and the desktop's LAN address
goes through the pods' network and its host rules. The desktop's service sees no connection, and
no event or status of the pod carries the secret; the probes did run (their Unhealthy events say
what the pod got: refused). The legitimate use still works: the same probes and a postStart hook
with host 127.0.0.1 on a port the pod itself serves make the pod Ready. A port-forward whose pod's
infra container is killed meanwhile never reaches the desktop's service of that port number.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from localenv import desktop_stack
from tests.e2e.test_security_network import host_address
from tests.e2e.test_virtual_node_probes import condition, events, status_of, wait_until
from tests.fixtures.listeners import answering
from tests.fixtures.virtual_node import VirtualNode, kubectl_stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Service:
    """A service of the desktop: answers `secret` (not HTTP) to whoever connects; counts them."""

    port: int
    secret: str
    peers: list[Any] = field(default_factory=list)


def _allowed(port: int, host_allow: list[str]) -> bool:
    """Whether the pods' host rules let pods reach `port` of the desktop (host_allow entries)."""
    for entry in host_allow:
        spec = str(entry).split("/", 1)[-1].rsplit(":", 1)[-1]
        low, _, high = spec.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


@contextmanager
def desktop_service(host: str, host_allow: list[str]) -> Iterator[Service]:
    """A TCP service of the desktop on `host`, on a free port the pods' host rules do not allow."""
    while True:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, 0))
        if not _allowed(server.getsockname()[1], host_allow):
            break
        server.close()
    server.listen(16)
    service = Service(port=int(server.getsockname()[1]), secret=f"kod-desktop-secret-{uuid.uuid4().hex}")
    with answering(server, service.secret.encode() + b"\n", service.peers, poll=0.2):
        yield service


@pytest.fixture
def services(virtual_node: VirtualNode) -> Iterator[tuple[Service, Service, str]]:
    """The desktop's service on 127.0.0.1, its service on every address, and its LAN address."""
    allow = [str(a) for a in desktop_stack.network_config(virtual_node.stack)["host_allow"]]
    with desktop_service("127.0.0.1", allow) as loopback, desktop_service("0.0.0.0", allow) as anywhere:
        lan = host_address()
        # Both answer the desktop itself: what the pod gets below is the sidecar's doing.
        for host, port in (("127.0.0.1", loopback.port), (lan, anywhere.port)):
            with socket.create_connection((host, port), timeout=5) as s:
                assert s.recv(200).startswith(b"kod-desktop-secret-")
        loopback.peers.clear()
        anywhere.peers.clear()
        yield loopback, anywhere, lan


def _everything_said(vn: VirtualNode, ns: str, name: str) -> str:
    """The pod's status and all its events, as text."""
    pod = vn.cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout
    said = vn.cluster.kubectl("get", "events", "-n", ns, "-o", "json",
                              "--field-selector", f"involvedObject.name={name}").stdout
    return pod + said


def _unhealthy(vn: VirtualNode, ns: str, name: str) -> dict[str, int]:
    return {m: n for (r, m), n in events(vn, ns, name).items() if r == "Unhealthy"}


SLEEP = ["sh", "-c", "sleep 3600"]


def test_probes_naming_the_desktops_addresses_reach_only_the_pod(
    virtual_node: VirtualNode, owner_namespace: str, services: tuple[Service, Service, str]
) -> None:
    vn, ns = virtual_node, owner_namespace
    loopback, anywhere, lan = services
    never_kill = {"periodSeconds": 1, "failureThreshold": 100000}
    pod = vn.pod("dials", [
        {"name": "a", "command": SLEEP,
         "readinessProbe": {"httpGet": {"host": "127.0.0.1", "port": loopback.port, "path": "/"}, "periodSeconds": 1},
         "livenessProbe": {"tcpSocket": {"host": lan, "port": anywhere.port}, **never_kill}},
        {"name": "b", "command": SLEEP,
         "readinessProbe": {"httpGet": {"host": lan, "port": anywhere.port, "path": "/"}, "periodSeconds": 1},
         "livenessProbe": {"tcpSocket": {"host": "127.0.0.1", "port": loopback.port}, **never_kill}},
    ], restartPolicy="Always", terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    vn.wait(ns, "dials", lambda p: all("running" in status_of(p, c).get("state", {}) for c in "ab"), what="running")
    # The probes run (both readiness probes fail, several times)...
    wait_until("failed readiness probes of both containers", lambda: all(
        sum(n for m, n in _unhealthy(vn, ns, "dials").items() if m.startswith(f'Readiness probe failed: Get "http://{h}:{p}/"')) >= 3
        for h, p in (("127.0.0.1", loopback.port), (lan, anywhere.port))), timeout=60)
    # ...and none of them reached the desktop, nor brought back what it answers.
    assert loopback.peers == [] and anywhere.peers == [], "a probe reached a service of the desktop"
    said = _everything_said(vn, ns, "dials")
    assert loopback.secret not in said and anywhere.secret not in said
    # What they got is the pod's own answer: nothing listens on its loopback, the host rules
    # refuse the desktop's LAN address.
    refused = f"dial tcp 127.0.0.1:{loopback.port}: connect: connection refused"
    wait_until("each probe's failure, as the pod sees it", lambda: all(
        any(m.startswith(prefix) for m in _unhealthy(vn, ns, "dials")) for prefix in (
            f'Readiness probe failed: Get "http://127.0.0.1:{loopback.port}/": {refused}',
            f"Liveness probe failed: {refused}",
            f"Liveness probe failed: dial tcp {lan}:{anywhere.port}",
        )), timeout=60)
    assert loopback.peers == [] and anywhere.peers == []
    now = vn.get(ns, "dials")
    assert now is not None and condition(now, "Ready") == "False"


def test_post_start_hooks_naming_the_desktops_addresses_reach_only_the_pod(
    virtual_node: VirtualNode, owner_namespace: str, services: tuple[Service, Service, str]
) -> None:
    vn, ns = virtual_node, owner_namespace
    loopback, anywhere, lan = services
    pod = vn.pod("hooks", [
        {"name": "a", "command": SLEEP,
         "lifecycle": {"postStart": {"httpGet": {"host": "127.0.0.1", "port": loopback.port, "path": "/"}}}},
        {"name": "b", "command": SLEEP,
         "lifecycle": {"postStart": {"httpGet": {"host": lan, "port": anywhere.port, "path": "/"}}}},
    ], restartPolicy="Always", terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    # Each hook ran and failed (nothing of the pod answers there), and the container was killed.
    vn.wait(ns, "hooks", lambda p: all(status_of(p, c).get("restartCount", 0) >= 1 for c in "ab"), timeout=90,
            what="both containers restarted after their failed hooks")
    assert ("FailedPostStartHook", "PostStartHook failed") in events(vn, ns, "hooks")
    assert loopback.peers == [] and anywhere.peers == [], "a hook reached a service of the desktop"
    said = _everything_said(vn, ns, "hooks")
    assert loopback.secret not in said and anywhere.secret not in said


def test_probes_and_hooks_on_the_pods_own_loopback_work(virtual_node: VirtualNode, owner_namespace: str) -> None:
    vn, ns = virtual_node, owner_namespace
    web = {"name": "web", "restartPolicy": "Always",
           "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 127.0.0.1:8080 -h /www"]}
    loopback = {"host": "127.0.0.1", "port": 8080}
    pod = vn.pod("own-loopback", [
        {"name": "main", "command": SLEEP,
         "lifecycle": {"postStart": {"httpGet": {**loopback, "path": "/healthz"}}},
         "readinessProbe": {"httpGet": {**loopback, "path": "/healthz"}, "periodSeconds": 1},
         "livenessProbe": {"tcpSocket": loopback, "periodSeconds": 1, "failureThreshold": 2}},
    ], initContainers=[web], restartPolicy="Always", terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    ready = vn.wait(ns, "own-loopback", lambda p: condition(p, "Ready") == "True", timeout=60, what="Ready")
    time.sleep(3)  # a few liveness probes more
    now = vn.get(ns, "own-loopback") or ready
    assert status_of(now, "main")["restartCount"] == 0 and condition(now, "Ready") == "True"
    assert not any(r in ("FailedPostStartHook", "Unhealthy") for r, _ in events(vn, ns, "own-loopback"))


def _answer(port: int, timeout: float = 10.0) -> tuple[bytes, bool]:
    """What a connection to 127.0.0.1:`port` (kubectl's port-forward) gets before it ends, and
    whether it hung (no end within `timeout`)."""
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            while chunk := s.recv(4096):
                got += chunk
    except TimeoutError:
        return got, True
    except OSError:
        pass
    return got, False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_forward_after_the_pods_infra_container_was_killed_never_reaches_the_desktop(
    virtual_node: VirtualNode, owner_namespace: str, services: tuple[Service, Service, str]
) -> None:
    vn, ns = virtual_node, owner_namespace
    loopback, _, _ = services
    port = loopback.port  # the pod serves the same port number on its own loopback
    pod = vn.pod("pf-killed", [{"name": "main", "command": [
        "sh", "-c", f"mkdir -p /www && echo pod-answer > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"]}],
        terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    running = vn.wait(ns, "pf-killed", lambda p: "running" in status_of(p).get("state", {}), what="running")
    local = _free_port()
    forward = kubectl_stream(vn.cluster, "port-forward", "-n", ns, "pod/pf-killed", f"{local}:{port}")
    try:
        assert "Forwarding from" in forward.readline(30)
        # The legitimate use: the pod's own server answers through the port-forward.
        assert wait_until("the pod's answer through the port-forward", lambda: b"pod-answer" in _answer(local)[0], timeout=30)
        infra = [c for c in vn.containers(running["metadata"]["uid"]) if c.labels.get("io.kod.role") == "infra"]
        assert len(infra) == 1
        infra[0].kill()
        # Every connection from now on: refused quickly (or the pod's own, until the sidecar
        # sees the kill), never the desktop's service of that port number.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got, hung = _answer(local)
            assert loopback.secret.encode() not in got
            assert not hung, "a port-forward connection hung instead of being refused"
            time.sleep(0.5)
    finally:
        forward.kill()
    assert loopback.peers == [], "the port-forward reached the desktop's service"
