"""`kubectl top` shows the virtual node's real numbers, as it does the real node's: a pod burning
CPU and one holding memory run on the desktop's virtual node and, for comparison, on kod-worker;
metrics-server (localenv) scrapes both kubelets; `kubectl top pod` and `kubectl top node` show
them. The virtual kubelet's /stats/summary refuses a caller without credentials."""

from __future__ import annotations

import copy
import json
import re
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from localenv.handle import ClusterHandle
from tests.fixtures.virtual_node import VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

WORKER = "kod-worker"
#: What the holder keeps in a shell variable: 100 MB (95.4 MiB).
HELD_BYTES = 100_000_000
BURN = "while :; do :; done"
HOLD = f'x=$(head -c {HELD_BYTES} /dev/zero | tr "\\0" a); echo held; sleep 3600'
#: metrics-server needs two scrapes (15 s apart) of a container before it reports it; a reading
#: whose window began after the holder's allocation takes up to two more.
TOP_TIMEOUT = 150
#: (namespace, pod) -> when (time.time()) its holder said "held": filling 100 MB through a shell
#: variable costs the holder seconds of CPU, which a window that began before is right to show.
HELD_AT: dict[tuple[str, str], float] = {}


def _pod(vn: VirtualNode, name: str) -> dict[str, Any]:
    return vn.pod(name, [
        {"name": "burn", "command": ["sh", "-c", BURN]},
        {"name": "hold", "command": ["sh", "-c", HOLD]},
    ])


def _on_worker(pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["spec"].pop("nodeName", None)
    out["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKER}
    out["spec"].pop("tolerations", None)
    return out


@pytest.fixture(scope="module")
def reference_namespace(cluster: ClusterHandle) -> Iterator[str]:
    name = f"kod-top-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def pods(virtual_node: VirtualNode, reference_namespace: str) -> Iterator[dict[str, tuple[str, str]]]:
    """The same pod on each node: where -> (namespace, name), both containers running and the
    memory held."""
    vn = virtual_node
    ns = vn.owner_namespace
    vn.cluster.kubectl("create", "namespace", ns, check=False)
    name = f"top-{uuid.uuid4().hex[:6]}"
    pod = _pod(vn, name)
    vn.create(ns, pod)
    vn.cluster.apply(_on_worker(pod), namespace=reference_namespace)
    where = {"virtual": (ns, name), "real": (reference_namespace, name)}
    try:
        for namespace, pod_name in where.values():
            vn.wait(namespace, pod_name, lambda p: len(p.get("status", {}).get("containerStatuses", [])) == 2
                    and all("running" in s.get("state", {}) for s in p["status"]["containerStatuses"]),
                    timeout=120, what="both containers running")
            deadline = time.monotonic() + 60
            while "held" not in vn.cluster.kubectl("logs", pod_name, "-n", namespace, "-c", "hold", check=False).stdout:
                assert time.monotonic() < deadline, f"{namespace}/{pod_name} never held its memory"
                time.sleep(0.5)
            HELD_AT[(namespace, pod_name)] = time.time()
        yield where
    finally:
        vn.cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false", check=False)
        vn.cluster.kubectl("delete", "pod", name, "-n", reference_namespace, "--wait=false", check=False)


def _cpu_millis(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def _mem_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert m, text
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def top_containers(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, tuple[int, int]]:
    """container -> (millicores, bytes) from `kubectl top pod --containers`; {} when not there yet."""
    proc = cluster.kubectl("top", "pod", name, "-n", namespace, "--containers", "--no-headers", check=False, timeout=30)
    if proc.returncode != 0:
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] == name:
            out[cols[1]] = (_cpu_millis(cols[2]), _mem_bytes(cols[3]))
    return out


_DURATION = re.compile(r"(?:(\d+)m)?(\d+(?:\.\d+)?)s")


def window_start(cluster: ClusterHandle, namespace: str, name: str) -> float | None:
    """When the window of the pod's current metrics began (time.time()), from the metrics API
    (`timestamp` is the window's end, `window` its length); None while there is none."""
    proc = cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
                           check=False, timeout=30)
    if proc.returncode != 0:
        return None
    metrics = json.loads(proc.stdout)
    length = _DURATION.fullmatch(metrics.get("window") or "")
    if length is None:
        return None
    end = datetime.fromisoformat(metrics["timestamp"].replace("Z", "+00:00")).timestamp()
    return end - (int(length.group(1) or 0) * 60 + float(length.group(2)))


def wait_top(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, tuple[int, int]]:
    """The first reading of a window that began after the holder held its memory, in which the
    burner shows more than half a core (the machine is shared: one reading may catch it
    starved), or the last one seen."""
    since = HELD_AT[(namespace, name)]
    deadline, seen = time.monotonic() + TOP_TIMEOUT, {}
    while time.monotonic() < deadline:
        start = window_start(cluster, namespace, name)
        if start is not None and start >= since:
            seen = top_containers(cluster, namespace, name) or seen
            if seen.get("burn", (0, 0))[0] > 500 and "hold" in seen:
                return seen
        time.sleep(3)
    return seen


@pytest.mark.parametrize("where", ["virtual", "real"])
def test_kubectl_top_pod_shows_the_burner_and_the_holder(virtual_node: VirtualNode, pods: Any, where: str) -> None:
    ns, name = pods[where]
    got = wait_top(virtual_node.cluster, ns, name)
    assert set(got) == {"burn", "hold"}, f"kubectl top pod {ns}/{name}: {got}"
    burn_cpu, burn_mem = got["burn"]
    hold_cpu, hold_mem = got["hold"]
    assert burn_cpu > 500, got  # a busy loop: most of a core
    assert hold_cpu < 100, got  # sleeping
    assert hold_mem >= HELD_BYTES, got  # at least what it holds
    assert hold_mem < 4 * HELD_BYTES and burn_mem < HELD_BYTES // 4, got  # and not someone else's memory


def test_kubectl_top_node_lists_the_virtual_node_with_numbers(virtual_node: VirtualNode, pods: Any) -> None:
    deadline, rows = time.monotonic() + TOP_TIMEOUT, {}
    while time.monotonic() < deadline:
        proc = virtual_node.cluster.kubectl("top", "node", "--no-headers", check=False, timeout=30)
        rows = {cols[0]: cols[1:] for cols in (line.split() for line in proc.stdout.splitlines()) if cols}
        if all(n in rows and "<unknown>" not in rows[n] for n in (virtual_node.name, WORKER)):
            break
        time.sleep(3)
    for node in (virtual_node.name, WORKER):
        assert node in rows and "<unknown>" not in rows[node], rows
        cpu, cpu_pct, mem, mem_pct = rows[node][:4]
        # The whole machine, which runs the burner: more than half a core, and some GiB.
        assert _cpu_millis(cpu) > 500 and _mem_bytes(mem) > 2 * HELD_BYTES, rows
        assert cpu_pct.endswith("%") and mem_pct.endswith("%")


def test_the_summary_api_through_the_api_server_has_the_pods_containers(virtual_node: VirtualNode, pods: Any) -> None:
    ns, name = pods["virtual"]
    raw = virtual_node.cluster.kubectl("get", "--raw", f"/api/v1/nodes/{virtual_node.name}/proxy/stats/summary").stdout
    summary = json.loads(raw)
    assert summary["node"]["nodeName"] == virtual_node.name
    assert summary["node"]["cpu"]["usageCoreNanoSeconds"] > 0 and summary["node"]["memory"]["workingSetBytes"] > 0
    (pod,) = [p for p in summary["pods"] if p["podRef"] == {"name": name, "namespace": ns, "uid": p["podRef"]["uid"]}]
    containers = {c["name"]: c for c in pod["containers"]}
    assert containers["hold"]["memory"]["workingSetBytes"] >= HELD_BYTES
    assert containers["burn"]["cpu"]["usageCoreNanoSeconds"] > 0 and containers["burn"]["cpu"]["time"].endswith("Z")
    metrics = virtual_node.cluster.kubectl("get", "--raw", f"/api/v1/nodes/{virtual_node.name}/proxy/metrics/resource").stdout
    assert f'container_cpu_usage_seconds_total{{container="burn",namespace="{ns}",pod="{name}"}} ' in metrics


@pytest.mark.parametrize("path", ["/stats/summary", "/metrics/resource"])
def test_usage_without_credentials_is_refused(virtual_node: VirtualNode, path: str) -> None:
    node = virtual_node.node()
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # who serves is not the question here
    try:
        urllib.request.urlopen(f"https://{address}:{port}{path}", context=ctx, timeout=10)
    except urllib.error.HTTPError as exc:
        status = json.loads(exc.read())
        assert exc.code in (401, 403) and status["kind"] == "Status" and status["code"] == exc.code
    else:
        raise AssertionError(f"{path} answered without credentials")
