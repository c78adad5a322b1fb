"""Live volumes on the virtual node, end to end (kubectl against the real cluster, vk_bridge ->
interlink -> the Docker sidecar -> the real Docker engine): a running pod's ConfigMap, Secret,
downwardAPI and projected files follow their sources, as on a kubelet, and its containers cannot
steer the swap.

What a user sees: `kubectl patch configmap` (or secret, or a new label on the pod) and, within the
resync period, `kubectl exec ... cat` shows the new value; a subPath mount keeps what it got at
the start (the kubelet does the same); a key removed from the ConfigMap is gone from the volume;
the volume has the kubelet's layout (`..data` -> a timestamped directory, each key a link
through `..data`), the same as on kod-worker, where the real kubelet runs the same pod. A
container of the pod cannot change the files or plant a link that the next update would follow:
its mounts are read-only, and after its try the next update still lands, in the volume only.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.virtual_node import VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WORKER = "kod-worker"
#: vk_bridge's volumes.resync_seconds is 10 and the watch delivers changes at once: a minute is ample.
UPDATE_WITHIN = 60.0
#: What `_until` reads for a file that is not there (echo adds a newline; the values written here have none).
ABSENT = "<absent>"


def _exec(vn: VirtualNode, ns: str, pod: str, script: str, *, check: bool = True) -> tuple[int, str]:
    proc = vn.cluster.kubectl("exec", "-n", ns, pod, "-c", "main", "--", "sh", "-c", script, check=False)
    if check:
        assert proc.returncode == 0, f"exec {script!r}: rc={proc.returncode} {proc.stderr}"
    return proc.returncode, proc.stdout + proc.stderr


def _until(vn: VirtualNode, ns: str, pod: str, path: str, want: str) -> float:
    """Seconds until `cat path` in the pod prints `want`, ABSENT when there is no such file (fails with
    the last value after UPDATE_WITHIN)."""
    start = time.monotonic()
    seen = ""
    while time.monotonic() - start < UPDATE_WITHIN:
        _, seen = _exec(vn, ns, pod, f"cat {path} 2>/dev/null || echo '{ABSENT}'", check=False)
        if seen == want:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{path} in {ns}/{pod} still reads {seen!r} after {UPDATE_WITHIN:.0f}s (want {want!r})")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _objects(suffix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"live-cfg-{suffix}"},
          "data": {"greeting": "hello", "farewell": "bye"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"live-sec-{suffix}"},
              "data": {"token": _b64("one")}}
    return cm, secret


def _pod_spec(vn: VirtualNode, name: str, suffix: str) -> dict[str, Any]:
    main = {
        "name": "main",
        "command": ["sh", "-c", "sleep 3600"],
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/cfg"},
            {"name": "sec", "mountPath": "/sec"},
            {"name": "info", "mountPath": "/info"},
            {"name": "proj", "mountPath": "/proj"},
            {"name": "cfg", "mountPath": "/sub/greeting", "subPath": "greeting"},
        ],
    }
    return vn.pod(name, [main], terminationGracePeriodSeconds=1, volumes=[
        {"name": "cfg", "configMap": {"name": f"live-cfg-{suffix}"}},
        {"name": "sec", "secret": {"secretName": f"live-sec-{suffix}"}},
        {"name": "info", "downwardAPI": {"items": [{"path": "mood", "fieldRef": {"fieldPath": "metadata.labels['mood']"}}]}},
        {"name": "proj", "projected": {"sources": [
            {"configMap": {"name": f"live-cfg-{suffix}", "items": [{"key": "greeting", "path": "p-greeting"}]}},
            {"secret": {"name": f"live-sec-{suffix}", "items": [{"key": "token", "path": "p-token"}]}},
        ]}},
    ])


@pytest.fixture
def live_pod(virtual_node: VirtualNode, owner_namespace: str) -> Iterator[tuple[str, str, str]]:
    suffix = uuid.uuid4().hex[:6]
    name = f"live-{suffix}"
    cm, secret = _objects(suffix)
    pod = _pod_spec(virtual_node, name, suffix)
    pod["metadata"]["labels"]["mood"] = "calm"
    virtual_node.create(owner_namespace, cm, secret, pod)
    virtual_node.wait_phase(owner_namespace, name, "Running", "Failed", "Succeeded", timeout=90)
    yield owner_namespace, name, suffix


def test_configmap_secret_label_and_projected_changes_reach_the_running_pod(
        virtual_node: VirtualNode, live_pod: tuple[str, str, str]) -> None:
    ns, name, suffix = live_pod
    vn = virtual_node
    assert vn.get(ns, name)["status"]["phase"] == "Running"
    assert _exec(vn, ns, name, "cat /cfg/greeting /sec/token /info/mood /proj/p-greeting /proj/p-token /sub/greeting")[1] \
        == "helloonecalmhelloonehello"

    vn.cluster.kubectl("patch", "configmap", f"live-cfg-{suffix}", "-n", ns, "--type=merge",
                       "-p", json.dumps({"data": {"greeting": "bonjour"}}))
    cm_delay = _until(vn, ns, name, "/cfg/greeting", "bonjour")
    proj_delay = _until(vn, ns, name, "/proj/p-greeting", "bonjour")
    vn.cluster.kubectl("patch", "secret", f"live-sec-{suffix}", "-n", ns, "--type=merge",
                       "-p", json.dumps({"data": {"token": _b64("two")}}))
    secret_delay = _until(vn, ns, name, "/sec/token", "two")
    _until(vn, ns, name, "/proj/p-token", "two")
    vn.cluster.kubectl("label", "pod", name, "-n", ns, "mood=happy", "--overwrite")
    label_delay = _until(vn, ns, name, "/info/mood", "happy")
    print(f"update delays: configMap {cm_delay:.1f}s, projected {proj_delay:.1f}s, secret {secret_delay:.1f}s, "
          f"downwardAPI {label_delay:.1f}s")

    # As on a kubelet: a subPath mount keeps the file it was given at the start.
    assert _exec(vn, ns, name, "cat /sub/greeting")[1] == "hello"
    # A key removed from the ConfigMap leaves the volume.
    vn.cluster.kubectl("patch", "configmap", f"live-cfg-{suffix}", "-n", ns, "--type=json",
                       "-p", json.dumps([{"op": "remove", "path": "/data/farewell"}]))
    _until(vn, ns, name, "/cfg/farewell", ABSENT + "\n")
    assert _exec(vn, ns, name, "ls /cfg")[1].split() == ["greeting"]


def test_a_container_cannot_steer_the_swap_of_its_volume(
        virtual_node: VirtualNode, live_pod: tuple[str, str, str]) -> None:
    """The container tries what would make the next swap write elsewhere or show its own files:
    re-point ..data at /, replace a key's link, write a file. Each is refused (read-only), and the
    next update lands in the volume and nowhere else."""
    ns, name, suffix = live_pod
    vn = virtual_node
    marker = f"kod-live-{uuid.uuid4().hex[:8]}"
    attacks = {
        "ln -sfn / /cfg/..data": "Read-only file system",
        "ln -sfn /etc/shadow /cfg/greeting.tmp && mv -f /cfg/greeting.tmp /cfg/greeting": "Read-only file system",
        f"echo {marker} > /cfg/greeting": "Read-only file system",
        f"echo {marker} > /sec/{marker}": "Read-only file system",
    }
    for script, refusal in attacks.items():
        rc, out = _exec(vn, ns, name, script, check=False)
        assert rc != 0 and refusal in out, f"{script!r} was not refused: rc={rc} {out!r}"

    vn.cluster.kubectl("patch", "configmap", f"live-cfg-{suffix}", "-n", ns, "--type=merge",
                       "-p", json.dumps({"data": {"greeting": marker}}))
    _until(vn, ns, name, "/cfg/greeting", marker)
    rc, out = _exec(vn, ns, name, "readlink /cfg/..data; readlink /cfg/greeting; ls -A /cfg", check=False)
    lines = out.split()
    assert rc == 0 and lines[0].startswith("..20") and lines[1] == "..data/greeting", out
    # Nothing landed where a planted link would have pointed: the desktop's root holds no such file.
    assert not Path("/greeting").exists() and not Path("/..data").exists()


def _layout(vn: VirtualNode, ns: str, name: str) -> list[str]:
    """The volume's entries and what each link points to, with the timestamp masked."""
    _, out = _exec(vn, ns, name, "cd /cfg && for f in $(ls -A); do printf '%s -> %s\\n' $f \"$(readlink $f)\"; done")
    masked = []
    for line in out.splitlines():
        entry, _, target = line.partition(" -> ")
        mask: Callable[[str], str] = lambda s: "..<timestamp>" if s.startswith("..20") else s  # noqa: E731
        masked.append(f"{mask(entry)} -> {mask(target)}")
    return sorted(masked)


def test_the_volume_has_the_kubelets_layout(virtual_node: VirtualNode, live_pod: tuple[str, str, str]) -> None:
    """Tools that watch `..data` (as on a kubelet) see the same entries on both nodes."""
    ns, name, suffix = live_pod
    vn = virtual_node
    ref_ns = f"kod-ref-{uuid.uuid4().hex[:6]}"
    vn.cluster.kubectl("create", "namespace", ref_ns)
    try:
        cm, secret = _objects(suffix)
        ref = copy.deepcopy(_pod_spec(vn, name, suffix))
        ref["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKER}
        ref["spec"].pop("tolerations", None)
        ref["metadata"]["labels"]["mood"] = "calm"
        vn.cluster.apply(cm, secret, ref, namespace=ref_ns)
        vn.wait_phase(ref_ns, name, "Running", "Failed", "Succeeded", timeout=90)
        assert _layout(vn, ns, name) == _layout(vn, ref_ns, name)
        assert _layout(vn, ns, name) == ["..<timestamp> -> ", "..data -> ..<timestamp>",
                                         "farewell -> ..data/farewell", "greeting -> ..data/greeting"]
    finally:
        vn.cluster.kubectl("delete", "namespace", ref_ns, "--wait=false", check=False)
