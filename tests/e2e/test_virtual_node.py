"""The desktop's virtual node behaves like a node, end to end: kubectl against the real cluster,
vk_bridge -> interlink -> Docker sidecar -> the real Docker engine. Assertions are what a user
sees: the node's state, pod phases and exit codes, `kubectl logs`, bytes in files, containers in
Docker that exist or are gone."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kod import labels
from tests.fixtures.virtual_node import VirtualNode, kubectl_stream

pytestmark = pytest.mark.e2e


def _terminated(pod: dict[str, Any], container: str = "main") -> dict[str, Any]:
    for st in pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", []):
        if st["name"] == container:
            return dict(st["state"].get("terminated") or {})
    raise AssertionError(f"no status for container {container}")


def test_the_virtual_node_is_ready_tainted_and_labelled(virtual_node: VirtualNode) -> None:
    node = virtual_node.node()
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    assert conds["MemoryPressure"] == conds["DiskPressure"] == conds["PIDPressure"] == "False"
    meta_labels = node["metadata"]["labels"]
    assert meta_labels["type"] == "virtual-kubelet" and meta_labels["kubernetes.io/os"] == "linux"
    # No kubernetes.io/role: NodeRestriction lets no node set it on itself (docs/security.md).
    assert labels.DESKTOP_OF in meta_labels
    assert {"key": labels.VIRTUAL_NODE_TAINT_KEY, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    status = node["status"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == virtual_node.stack.settings.kubelet_port
    assert {a["type"] for a in status["addresses"]} == {"InternalIP", "Hostname"}
    assert int(status["capacity"]["pods"]) >= 200 and status["allocatable"]["cpu"]
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    lease = virtual_node.cluster.kubectl_json("get", "lease", virtual_node.name, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == virtual_node.name


def test_echo_then_exit_0_succeeds_and_kubectl_logs_shows_it(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    virtual_node.create(ns, virtual_node.pod("echo", [{"name": "main", "command": ["sh", "-c", "echo hello from the desktop; echo line two"]}]))
    pod = virtual_node.wait_phase(ns, "echo", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == virtual_node.name
    term = _terminated(pod)
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert virtual_node.logs(ns, "echo") == "hello from the desktop\nline two\n"
    assert virtual_node.logs(ns, "echo", "--tail=1") == "line two\n"
    stamped = virtual_node.logs(ns, "echo", "--timestamps").splitlines()
    assert stamped[0].endswith(" hello from the desktop") and stamped[0][:4].isdigit()


def test_exit_3_fails_with_exit_code_3(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    virtual_node.create(ns, virtual_node.pod("three", [{"name": "main", "command": ["sh", "-c", "echo bye >&2; exit 3"]}]))
    pod = virtual_node.wait_phase(ns, "three", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Failed"
    assert _terminated(pod)["exitCode"] == 3 and _terminated(pod)["reason"] == "Error"
    assert virtual_node.logs(ns, "three") == "bye\n"


def test_two_containers_share_an_empty_dir_and_localhost(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    server = {
        "name": "server",
        "command": ["sh", "-c", "mkdir -p /www && echo served-over-localhost > /www/index.html && "
                                "echo written-by-server > /shared/note && httpd -f -p 127.0.0.1:8080 -h /www"],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }
    client = {
        "name": "main",
        "command": ["sh", "-c", "for i in $(seq 100); do [ -f /shared/note ] && wget -qO- http://127.0.0.1:8080/ 2>/dev/null && break; "
                                "sleep 0.2; done; cat /shared/note"],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }
    virtual_node.create(ns, virtual_node.pod("pair", [server, client], volumes=[{"name": "shared", "emptyDir": {}}]))
    virtual_node.wait(ns, "pair", lambda p: bool(_container_done(p, "main")), what="main finished")
    assert virtual_node.logs(ns, "pair", "-c", "main") == "served-over-localhost\nwritten-by-server\n"


def _container_done(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    for st in pod.get("status", {}).get("containerStatuses", []):
        if st["name"] == name and st["state"].get("terminated"):
            return dict(st["state"]["terminated"])
    return None


def test_config_map_and_secret_volumes_and_env_are_byte_for_byte(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    binary = bytes(range(256)) * 3
    multiline = "first line\n  indented: \"quoted\" $(NOT_EXPANDED) ümlaut\n\ttab\n"
    secret_bytes = b"s3cr3t\x00with-nul\xff"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
          "data": {"multi": multiline, "color": "blue", "size": "XL"},
          "binaryData": {"blob": base64.b64encode(binary).decode()}}
    # Env values cannot hold NUL (a kubelet fails such a container too): binary bytes go in a file.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"user": base64.b64encode(b"admin").decode(), "password": base64.b64encode("pä$$word\n".encode()).decode()}}
    raw = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "raw"},
           "data": {"raw": base64.b64encode(secret_bytes).decode(), "other": base64.b64encode(b"not mounted").decode()}}
    script = (
        "cd /cfg && sha256sum sub/multi.txt blob color && stat -L -c '%n %a' sub/multi.txt blob color && "
        "cd /sec && sha256sum raw-file && stat -L -c '%n %a' raw-file && ls /sec && "
        "printf '%s|' \"$COLOR\" \"$PASSWORD\" \"$CFG_size\" \"$user\" \"$GREETING\" \"$MULTI\""
    )
    main = {
        "name": "main",
        "command": ["sh", "-c", script],
        "env": [
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MULTI", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "multi"}}},
            {"name": "GREETING", "value": "$(COLOR)-$(CFG_size)-$$(COLOR)"},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}],
    }
    pod = virtual_node.pod("bytes", [main], volumes=[
        {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o640,
                                      "items": [{"key": "multi", "path": "sub/multi.txt", "mode": 0o600},
                                                {"key": "blob", "path": "blob"}, {"key": "color", "path": "color"}]}},
        {"name": "sec", "secret": {"secretName": "raw", "items": [{"key": "raw", "path": "raw-file", "mode": 0o400}]}},
    ])
    virtual_node.create(ns, cm, secret, raw, pod)
    done = virtual_node.wait_phase(ns, "bytes", "Succeeded", "Failed")
    out = virtual_node.logs(ns, "bytes")
    assert done["status"]["phase"] == "Succeeded", out
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    lines = out.split("\n")
    assert lines[0] == f"{sha(multiline.encode())}  sub/multi.txt"
    assert lines[1] == f"{sha(binary)}  blob"
    assert lines[2] == f"{sha(b'blue')}  color"
    assert lines[3:6] == ["sub/multi.txt 600", "blob 640", "color 640"]
    assert lines[6] == f"{sha(secret_bytes)}  raw-file"
    assert lines[7] == "raw-file 400"
    assert lines[8] == "raw-file"  # items: only the listed key
    values = "\n".join(lines[9:]).split("|")
    assert values[:5] == ["blue", "pä$$word\n", "XL", "admin", "blue-XL-$(COLOR)"]
    assert values[5] == multiline


def test_three_init_containers_run_in_order_before_the_main_one(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    inits = [{"name": f"init-{i}", "command": ["sh", "-c", f"echo init-{i} >> /work/order; sleep 0.3"],
              "volumeMounts": [{"name": "work", "mountPath": "/work"}]} for i in (1, 2, 3)]
    main = {"name": "main", "command": ["sh", "-c", "echo main >> /work/order; cat /work/order"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
    virtual_node.create(ns, virtual_node.pod("inits", [main], initContainers=inits, volumes=[{"name": "work", "emptyDir": {}}]))
    pod = virtual_node.wait_phase(ns, "inits", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    assert virtual_node.logs(ns, "inits") == "init-1\ninit-2\ninit-3\nmain\n"
    init_states = [_terminated(pod, f"init-{i}") for i in (1, 2, 3)]
    assert [s["exitCode"] for s in init_states] == [0, 0, 0]
    finished = [s["finishedAt"] for s in init_states]
    assert finished == sorted(finished) and finished[-1] <= _terminated(pod)["startedAt"]
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["Initialized"] == "True"


def test_exceeding_the_memory_limit_gives_oomkilled(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    # dd's 200 MiB buffer, as the container's main process, against a 32 MiB limit.
    hog = {"name": "main", "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
           "resources": {"limits": {"memory": "32Mi"}}}
    virtual_node.create(ns, virtual_node.pod("hog", [hog]))
    pod = virtual_node.wait_phase(ns, "hog", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Failed"
    term = _terminated(pod)
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137


@pytest.fixture(scope="module")
def entrypoint_image(virtual_node: VirtualNode) -> Iterator[str]:
    """An image with both ENTRYPOINT and CMD, built from the test image (removed afterwards)."""
    ref = "kod-test/entrypoint:e2e"
    dockerfile = f'FROM {virtual_node.image}\nENTRYPOINT ["echo", "entry"]\nCMD ["from-cmd"]\n'.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    virtual_node.docker.images.build(fileobj=buf, custom_context=True, tag=ref, labels={"kod.test": "virtual-node"}, rm=True)
    yield ref
    virtual_node.docker.images.remove(ref, force=True)


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (None, None, "entry from-cmd"),          # the image's ENTRYPOINT and CMD
        (None, ["a1", "a2"], "entry a1 a2"),     # args replace CMD only
        (["echo", "cmd"], None, "cmd"),          # command replaces ENTRYPOINT, and CMD is dropped
        (["echo", "cmd"], ["x"], "cmd x"),
    ],
)
def test_entrypoint_cmd_command_and_args_behave_as_on_a_kubelet(
    virtual_node: VirtualNode, owner_namespace: str, entrypoint_image: str,
    command: list[str] | None, args: list[str] | None, expected: str,
) -> None:
    ns = owner_namespace
    c: dict[str, Any] = {"name": "main", "image": entrypoint_image, "imagePullPolicy": "Never"}
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    virtual_node.create(ns, virtual_node.pod("ep", [c]))
    pod = virtual_node.wait_phase(ns, "ep", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    assert virtual_node.logs(ns, "ep") == expected + "\n"


def test_kubectl_logs_follow_streams_while_the_pod_runs(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    virtual_node.create(ns, virtual_node.pod("ticker", [{"name": "main", "command": ["sh", "-c", "for i in $(seq 1 40); do echo tick $i; sleep 0.25; done"]}]))
    virtual_node.wait_phase(ns, "ticker", "Running")
    follow = kubectl_stream(virtual_node.cluster, "logs", "-f", "ticker", "-n", ns)
    try:
        first = follow.readline(timeout=30)
        seen_at = time.monotonic()
        assert first.startswith("tick ")
        second = follow.readline(timeout=10)
        assert int(second.split()[1]) == int(first.split()[1]) + 1
        # The lines arrive while the pod still runs: it is not Succeeded yet.
        pod = virtual_node.get(ns, "ticker")
        assert pod is not None and pod["status"]["phase"] == "Running", "logs arrived only at the end"
        rest = follow.read_rest(timeout=60)  # the pod prints for 10 s, then the stream ends
        assert rest.rstrip().endswith("tick 40")
        assert time.monotonic() - seen_at > 2
        assert follow.wait(timeout=30) == 0
    finally:
        follow.kill()


def test_kubectl_delete_pod_removes_its_containers(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    virtual_node.create(ns, virtual_node.pod("sleeper", [{"name": "main", "command": ["sleep", "3600"]}]))
    pod = virtual_node.wait_phase(ns, "sleeper", "Running")
    uid = pod["metadata"]["uid"]
    assert [c for c in virtual_node.containers(uid) if c.status == "running"]
    virtual_node.cluster.kubectl("delete", "pod", "sleeper", "-n", ns, "--timeout=60s")
    assert virtual_node.get(ns, "sleeper") is None
    assert virtual_node.containers(uid) == []


@pytest.mark.parametrize(
    ("name", "change", "words"),
    [
        ("privileged", {"containers": [{"name": "main", "command": ["true"], "securityContext": {"privileged": True}}]},
         ["privileged"]),
        ("hostpath", {"containers": [{"name": "main", "command": ["cat", "/host/shadow"],
                                      "volumeMounts": [{"name": "etc", "mountPath": "/host"}]}],
                      "volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}]},
         ["/etc"]),
    ],
)
def test_pods_against_the_desktop_policy_are_refused_and_nothing_starts(
    virtual_node: VirtualNode, owner_namespace: str, name: str, change: dict[str, Any], words: list[str]
) -> None:
    ns = owner_namespace
    change = json.loads(json.dumps(change))
    body = virtual_node.pod(name, change.pop("containers"), **change)
    virtual_node.create(ns, body)
    pod = virtual_node.wait_phase(ns, name, "Failed", "Succeeded", "Running")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "Forbidden"
    for word in words:
        assert word in pod["status"]["message"]
    assert virtual_node.containers(pod["metadata"]["uid"]) == []
    events = virtual_node.cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    assert any(e["type"] == "Warning" and e["reason"] == "Forbidden" for e in events["items"])


def test_a_pod_without_the_toleration_never_lands_on_the_virtual_node(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    pinned = virtual_node.pod("no-toleration", [{"name": "main", "command": ["sleep", "60"]}])
    del pinned["spec"]["tolerations"]
    free = [virtual_node.pod(f"free-{i}", [{"name": "main", "command": ["sleep", "60"]}]) for i in range(4)]
    for p in free:
        del p["spec"]["tolerations"], p["spec"]["nodeSelector"]
    virtual_node.create(ns, pinned, *free)
    # The scheduler says why: the taint. And the pod stays unscheduled.
    def unschedulable(p: dict[str, Any]) -> bool:
        cond = next((c for c in p["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})
        # Any count: other nodes (a NotReady one, a tainted control plane) may be listed too.
        return cond.get("reason") == "Unschedulable" and re.search(r"\d+ node\(s\) had untolerated taint", cond.get("message", "")) is not None
    pod = virtual_node.wait(ns, "no-toleration", unschedulable, what="Unschedulable because of the taint")
    assert not pod["spec"].get("nodeName")
    for p in free:
        scheduled = virtual_node.wait(ns, p["metadata"]["name"], lambda q: bool(q["spec"].get("nodeName")), what="scheduled")
        assert scheduled["spec"]["nodeName"] != virtual_node.name
    assert not virtual_node.cluster.kubectl_json(
        "get", "pods", "-n", ns, "--field-selector", f"spec.nodeName={virtual_node.name}")["items"]


def test_the_kubelet_api_refuses_callers_the_cluster_does_not_authenticate(virtual_node: VirtualNode) -> None:
    import ssl
    import urllib.error
    import urllib.request

    node = virtual_node.node()
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for headers in ({}, {"Authorization": "Bearer not-a-real-token"}):
        req = urllib.request.Request(f"https://{address}:{port}/containerLogs/default/x/y", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        assert info.value.code == 401
        assert json.loads(info.value.read())["reason"] == "Unauthorized"
