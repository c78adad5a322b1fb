"""grpc probes on the virtual node, end to end (kubectl against the real cluster, vk_bridge ->
interlink -> Docker sidecar -> the real Docker engine, the sidecar's own HTTP/2 client
`sidecars/docker/grpc_health.py` against a real gRPC server), each held against the same pod on
the cluster's real node, kod-worker, whose kubelet (grpc-go) is the reference.

The server is `images/grpcbox` (Debian's python3-grpcio, a generic handler for
grpc.health.v1.Health/Check): service "" answers SERVING while /tmp/healthy exists, "up" always
SERVING, "down" always NOT_SERVING, any other name fails with NOT_FOUND "unknown service".

What a user sees: Ready/ContainersReady following the server's answer (`kubectl exec ... rm
/tmp/healthy` makes the pod NotReady, and `touch` Ready again) with no restart; a liveness probe
answered NOT_SERVING restarting the container (restartCount grows) with the kubelet's Unhealthy
and Killing events; a probe of a port where nothing listens, or of a service the server does not
know, failing with the kubelet's messages.

A dial that is refused (the server not listening yet) is redialled until timeoutSeconds on both
(test_a_grpc_probe_during_the_servers_start_waits_for_it_as_on_the_real_node). The other tests
start probing after initialDelaySeconds (the server listens within about half a second) so that
they compare steady states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from localenv import cluster_images, settings as localenv_settings
from localenv.cluster_images import IMAGES_DIR, LocalImage
from localenv.handle import ClusterHandle
from localenv.paths import paths_for
from tests.e2e.test_virtual_node_probes import (  # noqa: F401 - reference_namespace is a fixture
    both,
    condition,
    events,
    reference_namespace,
    status_of,
)
from tests.fixtures.virtual_node import VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

#: The gRPC health server image, built on demand for these tests (not one of the cluster's images).
GRPCBOX = LocalImage("kod/grpcbox:0.1.0", IMAGES_DIR / "grpcbox")
PORT = 9090
#: The server, healthy from the start (the file decides service "").
SERVE_HEALTHY = ["sh", "-c", f"touch /tmp/healthy && exec python3 /usr/local/bin/health_server.py {PORT}"]
UNHEALTHY = 'service unhealthy (responded with "NOT_SERVING")'
#: Past the server's start (about 0.5 s), even counted from the API's StartedAt, which the kubelet
#: compares with and which is truncated to the second.
INITIAL_DELAY = 3


@pytest.fixture(scope="module")
def grpcbox_image(cluster: ClusterHandle, docker_engine: Any) -> str:
    """kod/grpcbox, built in the desktop's Docker engine (where the sidecar runs pods; skipped
    when up to date) and imported into the real node's containerd, as the testbox is."""
    paths = paths_for(cluster.settings or localenv_settings.load())
    cluster_images.ensure(GRPCBOX, paths.logs_dir)
    cluster.import_images([GRPCBOX.ref])
    return GRPCBOX.ref


def grpc_pod(vn: VirtualNode, image: str, name: str, *containers: dict[str, Any]) -> dict[str, Any]:
    for c in containers:
        c.setdefault("image", image)
        c.setdefault("command", list(SERVE_HEALTHY))
    return vn.pod(name, list(containers), restartPolicy="Always", terminationGracePeriodSeconds=1)


def grpc_probe(service: str | None = None, port: int = PORT, **timing: int) -> dict[str, Any]:
    action: dict[str, Any] = {"port": port}
    if service is not None:
        action["service"] = service
    return {"grpc": action, "initialDelaySeconds": INITIAL_DELAY, "periodSeconds": 1, "failureThreshold": 1,
            "timeoutSeconds": 1, **timing}


def on_both(vn: VirtualNode, sides: dict[str, str], name: str, check: Callable[[dict[str, Any]], bool], what: str,
            timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Wait until the pod satisfies `check` on each side ({"virtual": ns, "kod-worker": ns})."""
    return {side: vn.wait(ns, name, check, timeout=timeout, what=f"{what} on {side}") for side, ns in sides.items()}


def kubectl_exec(vn: VirtualNode, ns: str, name: str, *cmd: str) -> None:
    vn.cluster.kubectl("exec", name, "-n", ns, "-c", "main", "--", *cmd, timeout=60)


def probe_events(vn: VirtualNode, ns: str, name: str, pod_ip: str | None = None) -> set[tuple[str, str]]:
    """The pod's Unhealthy and Killing events (reason, message), the pod's IP written as POD_IP."""
    out = set()
    for reason, message in events(vn, ns, name):
        if reason in ("Unhealthy", "Killing"):
            out.add((reason, message.replace(pod_ip, "POD_IP") if pod_ip else message))
    return out


def view(pod: dict[str, Any], container: str = "main") -> dict[str, Any]:
    """What `kubectl get pod` shows of the probe's effect."""
    st = status_of(pod, container)
    return {
        "phase": pod["status"].get("phase"),
        "Ready": condition(pod, "Ready"),
        "ContainersReady": condition(pod, "ContainersReady"),
        "ready": st.get("ready"),
        "started": st.get("started"),
        "state": sorted(st.get("state", {})),
        "restartCount": st.get("restartCount"),
    }


def test_a_grpc_readiness_probe_follows_the_servers_answer_as_on_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str, grpcbox_image: str
) -> None:
    vn = virtual_node
    sides = {"virtual": owner_namespace, "kod-worker": reference_namespace}
    both(vn, owner_namespace, reference_namespace,
         grpc_pod(vn, grpcbox_image, "grpc-ready", {"name": "main", "readinessProbe": grpc_probe()}))

    ready = on_both(vn, sides, "grpc-ready", lambda p: condition(p, "Ready") == "True", "Ready")
    want_ready = {"phase": "Running", "Ready": "True", "ContainersReady": "True", "ready": True, "started": True,
                  "state": ["running"], "restartCount": 0}
    assert {side: view(p) for side, p in ready.items()} == {side: want_ready for side in sides}

    for ns in sides.values():
        kubectl_exec(vn, ns, "grpc-ready", "rm", "/tmp/healthy")
    unready = on_both(vn, sides, "grpc-ready", lambda p: condition(p, "Ready") == "False", "NotReady", timeout=20)
    want_unready = {**want_ready, "Ready": "False", "ContainersReady": "False", "ready": False}
    assert {side: view(p) for side, p in unready.items()} == {side: want_unready for side in sides}
    seen = {side: probe_events(vn, ns, "grpc-ready") for side, ns in sides.items()}
    assert seen["kod-worker"] == {("Unhealthy", f"Readiness probe failed: {UNHEALTHY}")}
    assert seen["virtual"] == seen["kod-worker"]  # word for word what the kubelet writes

    for ns in sides.values():
        kubectl_exec(vn, ns, "grpc-ready", "touch", "/tmp/healthy")
    again = on_both(vn, sides, "grpc-ready", lambda p: condition(p, "Ready") == "True", "Ready again", timeout=20)
    assert {side: view(p) for side, p in again.items()} == {side: want_ready for side in sides}  # never restarted


def test_a_grpc_liveness_probe_answered_not_serving_restarts_the_container_as_on_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str, grpcbox_image: str
) -> None:
    vn = virtual_node
    sides = {"virtual": owner_namespace, "kod-worker": reference_namespace}
    # /tmp/healthy exists, so service "" would be SERVING: only the service name sent makes it fail.
    both(vn, owner_namespace, reference_namespace,
         grpc_pod(vn, grpcbox_image, "grpc-live", {"name": "main", "livenessProbe": grpc_probe("down")}))

    restarted = on_both(vn, sides, "grpc-live", lambda p: status_of(p).get("restartCount", 0) >= 1, "a restart")
    # The server stops at SIGTERM and exits 0: the runtime's reason for that, on both.
    last = {side: {k: status_of(p)["lastState"]["terminated"][k] for k in ("reason", "exitCode")}
            for side, p in restarted.items()}
    assert last == {side: {"reason": "Completed", "exitCode": 0} for side in sides}
    assert all(p["status"]["phase"] == "Running" for p in restarted.values())

    seen = {side: probe_events(vn, ns, "grpc-live") for side, ns in sides.items()}
    wanted = {
        ("Unhealthy", f"Liveness probe failed: {UNHEALTHY}"),
        ("Killing", "Container main failed liveness probe, will be restarted"),
    }
    assert seen == {"virtual": wanted, "kod-worker": wanted}  # no difference in wording


def test_grpc_probes_of_a_closed_port_and_of_an_unknown_service_fail_as_on_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str, grpcbox_image: str
) -> None:
    vn = virtual_node
    sides = {"virtual": owner_namespace, "kod-worker": reference_namespace}
    # "main" serves on 9090 but is probed on 9999 (nothing listens there); "side" probes the
    # server next to it (same network namespace) for a service it does not know. The two probes
    # start 2 s apart (see the report on concurrent first dials into one sandbox).
    both(vn, owner_namespace, reference_namespace, grpc_pod(
        vn, grpcbox_image, "grpc-fail",
        {"name": "main", "readinessProbe": grpc_probe(port=9999, initialDelaySeconds=1)},
        {"name": "side", "command": ["sleep", "3600"], "readinessProbe": grpc_probe("nosuch")},
    ))
    closed = 'Readiness probe failed: timeout: failed to connect service "POD_IP:9999" within 1s: context deadline exceeded'
    unknown = "Readiness probe failed: error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
    wanted = {("Unhealthy", closed), ("Unhealthy", unknown)}

    def failed(side: str, ns: str) -> Callable[[dict[str, Any]], bool]:
        def check(p: dict[str, Any]) -> bool:
            ip = p["status"].get("podIP")
            return bool(ip) and wanted <= probe_events(vn, ns, "grpc-fail", ip)
        return check

    pods = {side: vn.wait(ns, "grpc-fail", failed(side, ns), timeout=60, what=f"both Unhealthy events on {side}")
            for side, ns in sides.items()}
    time.sleep(2)  # more probes: still never Ready, never restarted
    for side, ns in sides.items():
        now = vn.get(ns, "grpc-fail")
        assert now is not None
        for c in ("main", "side"):
            assert {**view(now, c), "phase": now["status"]["phase"]} == {
                "phase": "Running", "Ready": "False", "ContainersReady": "False", "ready": False, "started": True,
                "state": ["running"], "restartCount": 0}, (side, c)
        assert probe_events(vn, ns, "grpc-fail", pods[side]["status"]["podIP"]) == wanted, side



def test_a_grpc_probe_during_the_servers_start_waits_for_it_as_on_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str, grpcbox_image: str
) -> None:
    """The server listens about 2.5 s after the container started, well within timeoutSeconds
    (10). The kubelet's grpc-go dial (WithBlock) redials a refused connection with its backoff
    (1 s, x1.6) until the deadline, so its first probe succeeds: Ready, no Unhealthy event. The
    sidecar redials the same way (it failed the refused dial at once before this test)."""
    vn = virtual_node
    sides = {"virtual": owner_namespace, "kod-worker": reference_namespace}
    late = ["sh", "-c", f"sleep 2; exec python3 /usr/local/bin/health_server.py {PORT}"]
    both(vn, owner_namespace, reference_namespace, grpc_pod(
        vn, grpcbox_image, "grpc-late",
        {"name": "main", "command": late,
         "readinessProbe": grpc_probe("up", initialDelaySeconds=0, periodSeconds=10, timeoutSeconds=10)},
    ))
    ready = {side: vn.wait(ns, "grpc-late", lambda p: condition(p, "Ready") == "True", timeout=30,
                           what=f"Ready on {side}") for side, ns in sides.items()}
    for side, ns in sides.items():
        assert probe_events(vn, ns, "grpc-late") == set(), side
        assert status_of(ready[side])["restartCount"] == 0, side
    assert view(ready["virtual"]) == view(ready["kod-worker"])
