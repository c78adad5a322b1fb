"""The desktop at home, as a node: another host behind NAT that reaches only the control plane
(the API server's port and the konnectivity server's), which cannot be dialled from the cluster
at all. Its virtual node is Ready, and the user's kubectl on the desktop runs, follows the logs
of and deletes a pod on it: the API server's calls to its kubelet API come back through the
tunnel the desktop dialled out. A kill -9 of either end of the tunnel heals on its own.

Run as their own suite with `pytest -m home` (the proving ground is set up once per session and
torn down at its end, even after failures)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localenv import desktop_stack, konnectivity, netlab, procs
from localenv.netns import entered
# The fixtures (home_lab, home_node, ...) come from the tests.fixtures.home plugin (tests/conftest.py):
# imported into each module they would be one session-scoped proving ground per module.
from tests.fixtures.home import HomeNode

pytestmark = [pytest.mark.e2e, pytest.mark.home]

#: How long a test waits for a killed end of the tunnel to be back: generous, a test's timeout and
#: not the issue's 10 s bound, which bench/home_link.py measures (healing time is a speed figure).
HEAL_TIMEOUT = 60.0


def _connects(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def desktop_listener(home_lab: netlab.Netlab) -> Iterator[tuple[int, list[str]]]:
    """A TCP server on every address of the desktop host; the peers it saw."""
    seen: list[str] = []
    with home_lab.desktop():
        srv = socket.create_server(("0.0.0.0", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            seen.append(peer[0])
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], seen
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_the_cluster_host_cannot_open_a_connection_to_the_desktop(
        home_lab: netlab.Netlab, desktop_listener: tuple[int, list[str]]) -> None:
    port, seen = desktop_listener
    t = home_lab.topology
    # From the desktop itself the server answers (it is listening)...
    with home_lab.desktop():
        assert _connects(t.desktop_address, port)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:  # the server thread takes it a moment later
        time.sleep(0.05)
    assert seen == [t.desktop_address]
    seen.clear()
    # ...from the cluster host, at none of its addresses: the desktop's own, or the router's.
    for address in (t.desktop_address, t.wan_router, t.lan_router):
        assert not _connects(address, port), f"the cluster host reached the desktop at {address}:{port}"
    assert seen == []


def test_the_desktop_reaches_the_control_plane_and_nothing_else(home_lab: netlab.Netlab) -> None:
    cluster = home_lab.cluster_address
    with home_lab.desktop():
        assert _connects(cluster, home_lab.apiserver_port)
        assert _connects(cluster, home_lab.tunnel_port)
        # The real node's kubelet API, and a NodePort, are out of reach in this variant.
        assert not _connects(cluster, 10250, timeout=1.0)
        assert not _connects(cluster, home_lab.topology.node_ports[0], timeout=1.0)


def test_the_virtual_node_is_ready_at_an_address_the_cluster_cannot_dial(home_node: HomeNode) -> None:
    node = home_node.node()
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    assert address == home_node.lab.topology.desktop_address  # type: ignore[union-attr]
    assert not _connects(address, home_node.stack.settings.kubelet_port, timeout=1.0)
    # It stays Ready: its Lease is renewed over the NAT.
    lease = lambda: home_node.cluster.kubectl_json("get", "lease", home_node.name, "-n", "kube-node-lease")  # noqa: E731
    first = lease()["spec"]["renewTime"]
    deadline = time.monotonic() + 30
    while lease()["spec"]["renewTime"] == first:
        assert time.monotonic() < deadline, "the Lease was not renewed within 30 s"
        time.sleep(1)
    assert home_node.node_ready() == "True"


def _ticker(node: HomeNode, name: str) -> dict[str, Any]:
    return node.pod(name, [{"name": "main", "command": ["sh", "-c",
                                                         "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done"]}],
                    terminationGracePeriodSeconds=1)


def test_kubectl_runs_follows_and_deletes_a_pod_on_the_desktop(home_node: HomeNode, home_owner_namespace: str) -> None:
    ns = home_owner_namespace
    home_node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_ticker(home_node, "ticker")))
    pod = home_node.wait_phase(ns, "ticker", "Running", timeout=90)
    assert pod["spec"]["nodeName"] == home_node.name
    uid = pod["metadata"]["uid"]
    assert [c.status for c in home_node.containers(uid, all=False)], "no running container in the desktop's engine"
    follow = home_node.kubectl_stream("logs", "-f", "-n", ns, "ticker")
    try:
        lines = [follow.readline(timeout=20) for _ in range(4)]
        assert all(line.startswith("tick ") for line in lines), lines
        numbers = [int(line.split()[1]) for line in lines]
        assert numbers == sorted(numbers) and numbers[-1] > numbers[0], "the log does not stream: " + repr(lines)
    finally:
        follow.kill()
    home_node.kubectl("delete", "pod", "-n", ns, "ticker", "--wait=true", timeout=90)
    assert home_node.get(ns, "ticker") is None
    deadline = time.monotonic() + 30
    while home_node.containers(uid):
        assert time.monotonic() < deadline, "the pod's containers are still in the desktop's engine"
        time.sleep(0.5)


def _logs_work(node: HomeNode, ns: str, name: str) -> bool:
    try:
        proc = node.kubectl("logs", "-n", ns, name, "--tail=1", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.startswith("tick ")


def _kill_tunnel_end(node: HomeNode, end: str) -> int:
    """SIGKILL the running program of one end (not its supervisor); returns its pid."""
    if end == "agent":
        record = procs.read_record(node.stack.run_dir / f"{desktop_stack.SCRIPTS[desktop_stack.TUNNEL]}.pid")
    else:
        record = procs.read_record(node.lab.paths.run_dir / f"{konnectivity.SERVER_NAME}.pid")  # type: ignore[union-attr]
    assert record is not None and procs.is_alive(record), f"the tunnel's {end} does not run"
    pid = konnectivity.child_pid(record.pid)
    assert pid is not None, f"the tunnel's {end} supervisor runs no program"
    subprocess.run(["kill", "-9", str(pid)], check=True)
    return pid


@pytest.mark.parametrize("end", ["agent", "server"])
def test_a_kill_9_of_either_end_of_the_tunnel_heals_within_10_s(home_node: HomeNode, home_owner_namespace: str,
                                                                end: str) -> None:
    ns = home_owner_namespace
    home_node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_ticker(home_node, "ticker")))
    home_node.wait_phase(ns, "ticker", "Running", timeout=90)
    deadline = time.monotonic() + 30
    while not _logs_work(home_node, ns, "ticker"):
        assert time.monotonic() < deadline, "kubectl logs does not work before the kill"
        time.sleep(0.5)
    killed = _kill_tunnel_end(home_node, end)
    started = time.monotonic()
    while not _logs_work(home_node, ns, "ticker"):
        assert time.monotonic() - started < HEAL_TIMEOUT, f"kubectl logs still fails {HEAL_TIMEOUT:g} s after kill -9 of the {end}"
        time.sleep(0.2)
    healed = time.monotonic() - started
    assert not procs._cmdline(killed), "the killed process is still there"
    # Nobody restarted anything by hand: the node is Ready and the pod still runs on it.
    assert home_node.node_ready() == "True"
    assert home_node.wait_phase(ns, "ticker", "Running", timeout=10)["spec"]["nodeName"] == home_node.name
    print(f"tunnel {end} killed: kubectl logs works again after {healed:.1f} s")
