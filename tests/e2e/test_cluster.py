"""The local cluster does what a user of Kubernetes expects, checked through kubectl: the node is
Ready, a Deployment of a locally built image serves through a NodePort, volumes outlive pods, Jobs
complete with logs."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from localenv.handle import ClusterHandle

pytestmark = pytest.mark.e2e


def _pod_spec(cluster: ClusterHandle, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": command}
    container.update(extra.pop("container", {}))
    # busybox as PID 1 ignores SIGTERM: without a short grace period every deletion takes 30 s.
    return {"nodeSelector": {"kubernetes.io/hostname": cluster.node_name}, "terminationGracePeriodSeconds": 1,
            "containers": [container], **extra}


def test_node_is_ready_and_apiserver_readyz_answers_ok(cluster: ClusterHandle) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    node = cluster.kubectl_json("get", "node", cluster.node_name)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"


def test_deployment_of_a_local_image_serves_through_a_nodeport_and_goes_away_with_its_pods(
    cluster: ClusterHandle, testbox_image: str, kube_namespace: str
) -> None:
    ns = kube_namespace
    labels = {"app": "web"}
    serve = "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(cluster, testbox_image, ["sh", "-c", serve], container={
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"type": "NodePort", "selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.apply(deployment, service)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=120s", timeout=150)

    pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app=web")["items"]
    ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])]
    assert len(ready) == 2
    assert {p["spec"]["nodeName"] for p in ready} == {cluster.node_name}

    node = cluster.kubectl_json("get", "node", cluster.node_name)
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    node_port = cluster.kubectl_json("get", "service", "web", "-n", ns)["spec"]["ports"][0]["nodePort"]
    # Both replicas answer through the one NodePort (kube-proxy picks at random): ask until each
    # has been seen. kube-proxy programs the rules a moment after the endpoints are ready, so a
    # refused connection at first only means "not yet".
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:{node_port}/", timeout=5) as resp:
                body = resp.read().decode()
        except urllib.error.URLError:
            time.sleep(0.2)
            continue
        assert body.startswith("hello from web-"), body
        seen.add(body.strip())
    assert seen == {f"hello from {p['metadata']['name']}" for p in ready}

    cluster.kubectl("delete", "deployment", "web", "-n", ns, "--wait=true", "--timeout=60s", timeout=90)
    cluster.kubectl("wait", "--for=delete", "pod", "-l", "app=web", "-n", ns, "--timeout=90s", timeout=120)
    assert cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app=web")["items"] == []


def test_a_pvc_binds_and_a_file_written_by_one_pod_is_read_by_a_later_pod(
    cluster: ClusterHandle, testbox_image: str, kube_namespace: str
) -> None:
    ns = kube_namespace
    token = uuid.uuid4().hex
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    cluster.apply(claim)
    cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data", "-n", ns, "--timeout=60s", timeout=90)
    volume_name = cluster.kubectl_json("get", "pvc", "data", "-n", ns)["spec"]["volumeName"]

    def run_pod(name: str, script: str) -> str:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": _pod_spec(
                cluster, testbox_image, ["sh", "-c", script], restartPolicy="Never",
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            ),
        }
        cluster.apply(pod)
        cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{name}", "-n", ns,
                        "--timeout=90s", timeout=120)
        logs = cluster.kubectl("logs", name, "-n", ns).stdout
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", timeout=90)
        return logs

    run_pod("writer", f"echo {token} > /data/note && echo written")
    assert run_pod("reader", "cat /data/note").strip() == token

    # The claim goes, and with it (reclaim policy Delete) the volume.
    cluster.kubectl("delete", "pvc", "data", "-n", ns, "--wait=true", timeout=90)
    cluster.kubectl("wait", "--for=delete", f"pv/{volume_name}", "--timeout=60s", timeout=90)


def test_a_job_completes_and_kubectl_logs_shows_its_output(
    cluster: ClusterHandle, testbox_image: str, kube_namespace: str
) -> None:
    ns = kube_namespace
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "answer", "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": _pod_spec(cluster, testbox_image, ["sh", "-c", 'echo "the answer is $((6 * 7))"'],
                                           restartPolicy="Never")},
        },
    }
    cluster.apply(job)
    cluster.kubectl("wait", "--for=condition=Complete", "job/answer", "-n", ns, "--timeout=120s", timeout=150)
    assert cluster.kubectl("logs", "job/answer", "-n", ns).stdout.strip() == "the answer is 42"


def test_a_cluster_named_by_kubeconfig_is_reused_and_an_unreachable_one_is_not(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    from localenv import handle

    copy = tmp_path / "other.kubeconfig"
    copy.write_text(cluster.kubeconfig.read_text())
    reused = handle.from_kubeconfig(copy, cluster.kubectl_path)
    assert reused is not None and reused.reused
    assert reused.node_name == cluster.node_name
    assert reused.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"

    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(cluster.kubeconfig.read_text().replace(":6443", ":1"))
    assert handle.from_kubeconfig(dead, cluster.kubectl_path) is None
