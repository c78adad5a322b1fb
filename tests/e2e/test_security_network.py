"""Attacks from the network side of the desktop: pods on the virtual node against the viewer, the
desktop's own services and the user's own containers, and anyone else against a session's
forwarder. Each attack must fail, while what the product needs (the cluster's API server, a
NodePort, the session itself) keeps working. Real Docker engine, cluster, X and PulseAudio.

The pods' network and its rules are the Docker sidecar's (sidecars/docker/network.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cloudify.viewers.docker import interface_address
from kod import apps
from localenv import desktop_stack
from sidecars.docker import network as sidecar_network
from tests.e2e.cloudify_support import (  # noqa: F401 - fixtures
    FIREFOX_WINDOW,
    Cloudify,
    cloudify,
    cloudify_images,
    firefox_drawn,
    wait_gone,
)
from tests.e2e.test_cloudify_session import close_firefox, see_firefox
from tests.fixtures.desktop import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DOCKER = "/usr/bin/docker"
#: A hostile pod's program: sniff eth0 with a raw socket for `seconds` while answering ARP for
#: the victim's (and the gateway's) address with its own MAC; prints what it saw as JSON.
HOSTILE = r"""
import json, socket, struct, sys, time
victim, gateway, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = {"raw": False, "frames": 0, "victim_frames": 0, "arp_sent": 0, "error": ""}
try:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("eth0", 0))
    out["raw"] = True
except OSError as exc:
    out["error"] = str(exc)
    print(json.dumps(out)); sys.exit(0)
mac = s.getsockname()[4]
# Promiscuous mode (PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC).
mreq = struct.pack("iHH8s", socket.if_nametoindex("eth0"), 1, 0, b"")
try:
    s.setsockopt(263, 1, mreq)
except OSError as exc:
    out["error"] = "promisc: " + str(exc)
s.settimeout(0.1)
vip, gip = socket.inet_aton(victim), socket.inet_aton(gateway)
def arp_reply(claimed, target_ip):
    # Ethernet broadcast, ARP reply "claimed is at <my mac>".
    return b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + claimed + b"\xff" * 6 + target_ip
end, next_arp = time.time() + seconds, 0.0
while time.time() < end:
    if time.time() >= next_arp:
        for claimed, target in ((vip, gip), (gip, vip)):
            s.send(arp_reply(claimed, target)); out["arp_sent"] += 1
        next_arp = time.time() + 0.2
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    out["frames"] += 1
    kind = frame[12:14]
    if kind == b"\x08\x00" and (frame[26:30] == vip or frame[30:34] == vip):
        out["victim_frames"] += 1
    elif kind == b"\x08\x06" and frame[6:12] != mac and vip in (frame[28:32], frame[38:42]):
        out["victim_frames"] += 1
print(json.dumps(out))
"""


def docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {out.stderr}")
    return out.stdout.strip()


def pods_network(virtual_node: Any) -> dict[str, Any]:
    """The sidecar's pod network, as the engine describes it."""
    name = f"kod-{virtual_node.stack.settings.sidecar_name}-pods"
    return dict(json.loads(docker("network", "inspect", name))[0])


def infra_of(virtual_node: Any, namespace: str, pod: str, role: str = "infra") -> dict[str, Any]:
    """The Docker inspect of a pod's infra container (its network namespace), or of its `main` one."""
    uid = virtual_node.cluster.kubectl_json("get", "pod", "-n", namespace, pod)["metadata"]["uid"]
    found = [c for c in virtual_node.containers(uid) if c.labels.get("io.kod.role") == role]
    assert found, f"no {role} container for pod {namespace}/{pod}"
    found[-1].reload()
    return dict(found[-1].attrs)


def run_pod(virtual_node: Any, namespace: str, name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """A pod on the desktop running `command` (testbox image); returns it once Running."""
    container: dict[str, Any] = {"name": "main", "command": command, **extra.pop("container", {})}
    virtual_node.create(namespace, virtual_node.pod(name, [container], **extra))
    return virtual_node.wait_phase(namespace, name, "Running", "Succeeded", "Failed", timeout=90)


#: Tries a TCP connection to each HOST:PORT argument (3 s each); prints "open X" or "closed X (why)".
PROBE = r"""
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(3)
        code = s.connect_ex((host, int(port)))
    print(("open " if code == 0 else "closed ") + target, flush=True)
"""


def probe_pod(virtual_node: Any, namespace: str, name: str, targets: list[tuple[str, int]]) -> dict[str, bool]:
    """From a pod on the desktop, try a TCP connection to each target (3 s each); which connected."""
    run_pod(virtual_node, namespace, name, [], container={
        "image": apps.image_ref("firefox"), "command": ["python3", "-c", PROBE, *(f"{h}:{p}" for h, p in targets)]})
    virtual_node.wait_phase(namespace, name, "Succeeded", "Failed", timeout=30 + 5 * len(targets))
    out = virtual_node.logs(namespace, name)
    found: dict[str, bool] = {}
    for line in out.splitlines():
        state, _, target = line.partition(" ")
        if state in ("open", "closed"):
            found[target] = state == "open"
    assert len(found) == len(targets), out
    return found


@contextmanager
def listening(host: str) -> Iterator[int]:
    """A TCP server of the desktop on `host` (a free port) that greets whoever connects."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"desktop secret\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def answers(host: str, port: int) -> bool:
    """True when a TCP connection from the desktop to host:port opens within 2 s."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def host_address() -> str:
    """This machine's address on its LAN (the interface of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent: only the route is looked up
        return str(s.getsockname()[0])


def api_server(cluster: Any) -> tuple[str, int]:
    server = cluster.kubectl_json("config", "view", "--minify")["clusters"][0]["cluster"]["server"]
    url = urllib.parse.urlsplit(server)
    return url.hostname or "", url.port or 443


# ------------------------------------------------------------------------------------------------ tests


def test_pods_are_on_a_network_of_their_own_without_traffic_between_pods(
        virtual_node: Any, owner_namespace: str, cloudify_images: Any) -> None:
    net = pods_network(virtual_node)
    assert net["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert net["Labels"]["io.kod.sidecar"] == virtual_node.stack.settings.sidecar_name
    run_pod(virtual_node, owner_namespace, "web", ["httpd", "-f", "-p", "8080"])
    infra = infra_of(virtual_node, owner_namespace, "web")
    assert list(infra["NetworkSettings"]["Networks"]) == [net["Name"]], "a pod joined another network"
    ip = infra["NetworkSettings"]["Networks"][net["Name"]]["IPAddress"]
    # Another pod of the desktop cannot reach it (no traffic between pods), the desktop can.
    found = probe_pod(virtual_node, owner_namespace, "neighbour", [(ip, 8080)])
    assert found == {f"{ip}:8080": False}
    socket.create_connection((ip, 8080), timeout=5).close()


def test_the_users_own_containers_and_the_pods_cannot_reach_each_other(
        virtual_node: Any, owner_namespace: str, testbox_image: str, cloudify_images: Any) -> None:
    run_pod(virtual_node, owner_namespace, "web", ["httpd", "-f", "-p", "8080"])
    net = pods_network(virtual_node)
    pod_ip = infra_of(virtual_node, owner_namespace, "web")["NetworkSettings"]["Networks"][net["Name"]]["IPAddress"]
    name = f"kod-test-user-{uuid.uuid4().hex[:6]}"
    docker("run", "-d", "--name", name, testbox_image, "httpd", "-f", "-p", "8081")
    try:
        user_ip = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
        assert user_ip, "the user's container has no address on Docker's default bridge"
        # The user's container (plain `docker run`, Docker's default bridge) tries the pod...
        from_user = subprocess.run([DOCKER, "run", "--rm", "--entrypoint", "python3", apps.image_ref("firefox"),
                                    "-c", PROBE, f"{pod_ip}:8080", f"{user_ip}:8081"],
                                   capture_output=True, text=True, timeout=60, check=False).stdout
        # It reaches its neighbour on the default bridge, not the pod.
        assert f"closed {pod_ip}:8080" in from_user and f"open {user_ip}:8081" in from_user, from_user
        # ...and a pod tries the user's container.
        assert probe_pod(virtual_node, owner_namespace, "to-user", [(user_ip, 8081)]) == {f"{user_ip}:8081": False}
        # Both servers do answer where they should: the host reaches each of them.
        for ip, port in ((pod_ip, 8080), (user_ip, 8081)):
            socket.create_connection((ip, port), timeout=5).close()
    finally:
        docker("rm", "-f", name, check=False)


def test_pods_cannot_reach_the_desktops_services_but_reach_the_cluster(
        virtual_node: Any, owner_namespace: str, kube_namespace: str, cluster: Any, testbox_image: str,
        cloudify_images: Any) -> None:
    gateway = pods_network(virtual_node)["IPAM"]["Config"][0]["Gateway"]
    docker0 = interface_address("docker0")
    assert docker0, "no docker0 address"
    lan = host_address()
    # The API server as pods see it: on the node's address (its kubeconfig may say 127.0.0.1).
    _, api_port = api_server(cluster)
    # A NodePort of the cluster, served by a pod on the cluster's real node.
    cluster.apply(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "kod-net-web"}},
         "spec": {"nodeName": cluster.node_name, "containers": [{"name": "web", "image": testbox_image,
                  "imagePullPolicy": "IfNotPresent", "command": ["httpd", "-f", "-p", "8080"]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"type": "NodePort", "selector": {"app": "kod-net-web"}, "ports": [{"port": 8080, "targetPort": 8080}]}},
        namespace=kube_namespace,
    )
    cluster.kubectl("wait", "-n", kube_namespace, "--for=condition=Ready", "pod/web", "--timeout=90s")
    node_port = cluster.kubectl_json("get", "service", "-n", kube_namespace, "web")["spec"]["ports"][0]["nodePort"]
    node_ip = next(a["address"] for a in cluster.kubectl_json("get", "node", cluster.node_name)["status"]["addresses"]
                   if a["type"] == "InternalIP")
    kubelet_port = virtual_node.stack.settings.kubelet_port
    # The cluster's side is ready first: kube-proxy programs a new NodePort a moment after the
    # Service exists (in one loaded CI run, later than the pod's single 3 s try), and what this
    # test attacks is the pod's path, not kube-proxy's delay.
    wait_for(lambda: answers(node_ip, node_port), 90, f"NodePort {node_ip}:{node_port} to answer the desktop", interval=0.5)
    with listening("0.0.0.0") as anywhere, listening(docker0) as on_docker0, listening(gateway) as on_gateway:
        # The desktop's services answer the desktop itself: the refusals below are the rules'.
        for host, port in ((lan, anywhere), (docker0, on_docker0), (gateway, on_gateway), (lan, kubelet_port)):
            socket.create_connection((host, port), timeout=5).close()
        found = probe_pod(virtual_node, owner_namespace, "prober", [
            (lan, anywhere), (gateway, anywhere), (docker0, on_docker0), (gateway, on_gateway),
            (lan, kubelet_port), (gateway, kubelet_port),
            (node_ip, api_port), (node_ip, node_port),
        ])
    closed = {k: v for k, v in found.items() if k not in (f"{node_ip}:{api_port}", f"{node_ip}:{node_port}")}
    assert not any(closed.values()), f"a pod reached a service of the desktop: {found}"
    assert found[f"{node_ip}:{api_port}"], f"a pod no longer reaches the cluster's API server: {found}"
    assert found[f"{node_ip}:{node_port}"], f"a pod no longer reaches a NodePort: {found}"


def test_a_hostile_pod_cannot_arp_spoof_or_sniff_the_viewer(
        cloudify: Cloudify, desktop: Any, virtual_node: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "hostile-neighbour")
    sid, ns = session.session_id, cloudify.namespace
    viewer = infra_of(virtual_node, ns, f"kod-firefox-{sid}-viewer")
    net = pods_network(virtual_node)
    endpoint = viewer["NetworkSettings"]["Networks"][net["Name"]]
    victim, victim_mac = endpoint["IPAddress"], endpoint["MacAddress"]
    gateway = net["IPAM"]["Config"][0]["Gateway"]
    bridge = net["Options"]["com.docker.network.bridge.name"]
    # The attacker: a pod of the same desktop, as root, asking for NET_RAW (Docker's default set).
    spec: dict[str, Any] = {"container": {"image": apps.image_ref("firefox"),
                                          "command": ["python3", "-c", HOSTILE, victim, gateway, "12"],
                                          "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_RAW"]}}}}
    pod = run_pod(virtual_node, ns, "hostile", [], **spec)
    if pod["status"]["phase"] == "Failed" and "NET_RAW" in json.dumps(pod["status"]):
        # The desktop policy refuses NET_RAW altogether: the same attack without it.
        virtual_node.cluster.kubectl("delete", "pod", "-n", ns, "hostile", "--wait=true")
        spec["container"]["securityContext"] = {"runAsUser": 0}
        run_pod(virtual_node, ns, "hostile", [], **spec)
    # Traffic to and from the viewer while the attacker listens: the desktop knocks at its door.
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            s.connect_ex((victim, 9))
        time.sleep(0.05)
    virtual_node.wait_phase(ns, "hostile", "Succeeded", "Failed", timeout=60)
    seen = json.loads(virtual_node.logs(ns, "hostile").strip().splitlines()[-1])
    virtual_node.cluster.kubectl("delete", "pod", "-n", ns, "hostile", "--wait=false")
    print("hostile pod:", seen)
    if seen["raw"]:
        assert seen["arp_sent"] > 20, seen
        assert seen["victim_frames"] == 0, f"the hostile pod saw the viewer's traffic: {seen}"
    else:
        assert "Operation not permitted" in seen["error"], seen
    # The desktop still sends the viewer's packets to the viewer (its address is pinned)...
    neigh = subprocess.run(["ip", "neigh", "show", victim, "dev", bridge], capture_output=True, text=True, check=True).stdout
    assert victim_mac in neigh and "PERMANENT" in neigh, neigh
    # ...the viewer still knows the real gateway...
    viewer_main = infra_of(virtual_node, ns, f"kod-firefox-{sid}-viewer", role="main")
    arp = docker("exec", viewer_main["Id"], "cat", "/proc/net/arp")
    gateway_mac = open(f"/sys/class/net/{bridge}/address").read().strip()
    for line in arp.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == gateway:
            assert fields[3] == gateway_mac, f"the viewer's gateway entry was spoofed: {line}"
    # ...and the session goes on: Firefox is still drawn in the viewer window.
    desktop.wait_for_content(window.box, firefox_drawn, timeout=30, what="Firefox still drawn after the attack")
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


def _listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process `pid` listens on."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            local = line.split()[3]
            host, _, port = local.rpartition(":")
            found.append((host.strip("[]"), int(port)))
    return found


def _greeting(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout + out.stderr


GREET = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); s.settimeout(8);"
         "print('got', repr(s.recv(64)))")


@pytest.mark.parametrize("mode", ["docker", "native"])
def test_nobody_but_the_sessions_viewer_can_use_its_forwarder(
        cloudify: Cloudify, desktop: Any, virtual_node: Any, owner_namespace: str, testbox_image: str, mode: str) -> None:
    # docker: the viewer container reaches the app through cloudify's port-forward (SSH);
    # native --insecure: the desktop's vncviewer reaches VNC through it (no SSH to protect it).
    args = ["-r", "docker", "--reach", "port-forward"] if mode == "docker" else ["-r", "native", "--insecure"]
    session, window = see_firefox(cloudify, desktop, f"forwarder-{mode}", *args)
    listeners = [(h, p) for h, p in _listeners(session.proc.pid) if h not in ("*", "0.0.0.0")]
    assert listeners, "cloudify opened no forwarder"
    expected = b"SSH-2.0" if mode == "docker" else b"RFB 003.008"
    attempts: dict[str, str] = {}
    for host, port in listeners:
        # Another local user of this machine (uid 65534).
        attempts[f"user {host}:{port}"] = _greeting(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", GREET, host, str(port)])
        if mode == "docker":
            # The user's own container on Docker's default bridge, and a pod of the desktop.
            attempts[f"container {host}:{port}"] = _greeting(
                [DOCKER, "run", "--rm", "--entrypoint", "python3", apps.image_ref("firefox"), "-c", GREET, host, str(port)])
            name = f"fwd-{port}"
            run_pod(virtual_node, owner_namespace, name, [], container={
                "image": apps.image_ref("firefox"), "command": ["python3", "-c", GREET, host, str(port)]})
            virtual_node.wait_phase(owner_namespace, name, "Succeeded", "Failed", timeout=60)
            attempts[f"pod {host}:{port}"] = virtual_node.logs(owner_namespace, name)
            virtual_node.cluster.kubectl("delete", "pod", "-n", owner_namespace, name, "--wait=false")
    for who, what in attempts.items():
        assert expected.decode() not in what, f"{who} got through the session's forwarder: {what}"
    # Each was turned away by the forwarder itself (it says so), and the viewer still works through it.
    assert session.stderr.count("refused a connection to the session's forwarder") >= len(attempts), session.stderr
    desktop.wait_for_content(window.box, firefox_drawn, timeout=30, what="Firefox still drawn")
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


def test_the_local_stack_configures_the_pods_network_for_its_cluster(virtual_node: Any) -> None:
    config = desktop_stack.network_config(virtual_node.stack)
    port = desktop_stack.api_server_port(virtual_node.stack.cluster.kubeconfig)
    assert config["host_rules"] == "on" and f"tcp/{port}" in config["host_allow"]
    chain = sidecar_network.chain_name(_sidecar_settings(virtual_node))
    rules = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True, check=True).stdout
    assert f"--dport {port} -j ACCEPT" in rules and "REJECT" in rules, rules


def _sidecar_settings(virtual_node: Any) -> Any:
    from sidecars.docker.settings import DockerSidecarSettings

    return DockerSidecarSettings(name=virtual_node.stack.settings.sidecar_name)
