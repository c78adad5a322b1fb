"""`kubectl exec` and `kubectl port-forward` on the desktop's virtual node against the cluster's
real node (kod-worker, the real kubelet and containerd), side by side in one run.

    .venv/bin/python bench/kubectl_streams.py [--execs 20] [--requests 20] [--downloads 3] [--mib 100]

- exec: wall time of `kubectl exec POD -c main -- true`, --execs times per node (median, p95,
  min): kubectl -> API server (WebSocket v5, translated to SPDY) -> the kubelet API -> the
  runtime. On the virtual node the kubelet is vk_bridge, then interlink and the Docker sidecar
  (Docker exec); on kod-worker the kubelet and containerd.
- port-forward: one `kubectl port-forward` per node to a web server bound to the pod's
  127.0.0.1:8080; the latency of a small GET (--requests times, a new connection each) and the
  throughput of downloading a --mib MiB file (--downloads times; median MiB/s), its SHA-256
  checked against the pod's own.

The virtual node is a private stack of its own (`<node>-sbench`, its own ports and directory),
started from this checkout and stopped at the end. Prints a table and writes
bench/results/kubectl_streams.json (stamped with date, commit and load average).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kod import labels  # noqa: E402
from localenv import cluster_images, desktop_stack, handle  # noqa: E402
from localenv import settings as localenv_settings  # noqa: E402
from localenv.paths import paths_for  # noqa: E402
from localenv.progress import Progress  # noqa: E402

from bench.results import Run  # noqa: E402

WORKER = "kod-worker"


def bench_settings() -> desktop_stack.StackSettings:
    return desktop_stack.load_stack_settings().private("sbench", port_offset=700, kubelet_port_offset=7,
                                                       log_level="warning")


def server_script(mib: int) -> str:
    return (
        "mkdir -p /tmp/www && echo ok > /tmp/www/small && "
        f"head -c {mib * 1024 * 1024} /dev/urandom > /tmp/www/big && "
        "sha256sum /tmp/www/big | cut -d' ' -f1 > /tmp/www/big.sha256 && "
        "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
    )


def pod(name: str, node: str, mib: int, *, virtual: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "main", "image": cluster_images.TESTBOX.ref, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]},
            {"name": "web", "image": cluster_images.TESTBOX.ref, "imagePullPolicy": "IfNotPresent",
             "command": ["sh", "-c", server_script(mib)]},
        ],
    }
    if virtual:
        spec["tolerations"] = [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "p95": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))], 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "n": len(ordered),
    }


class Target:
    """One pod on one node and the kubectl that reaches it."""

    def __init__(self, cluster: handle.ClusterHandle, label: str, namespace: str, name: str) -> None:
        self.cluster, self.label, self.namespace, self.name = cluster, label, namespace, name

    def kubectl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig}", *args],
                              capture_output=True, timeout=timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.kubectl("exec", self.name, "-n", self.namespace, "-c", "web", "--", "test", "-s", "/tmp/www/big.sha256")
            if proc.returncode == 0:
                return
            time.sleep(1)
        raise SystemExit(f"{self.label}: the pod {self.namespace}/{self.name} did not come up")

    def exec_true(self) -> float:
        started = time.perf_counter()
        proc = self.kubectl("exec", self.name, "-n", self.namespace, "-c", "main", "--", "true")
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{self.label}: kubectl exec failed: {proc.stderr.decode()}")
        return elapsed


class Forward:
    def __init__(self, target: Target, remote: int) -> None:
        self.proc = subprocess.Popen(
            [str(target.cluster.kubectl_path), f"--kubeconfig={target.cluster.kubeconfig}", "port-forward", "-n",
             target.namespace, f"pod/{target.name}", f":{remote}", "--address", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        match = re.search(r"127\.0\.0\.1:(\d+) ->", self.proc.stdout.readline())
        if not match:
            raise SystemExit(f"{target.label}: kubectl port-forward did not start")
        self.port = int(match.group(1))

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=300) as r:
            return bytes(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    target.exec_true()  # the first one warms caches on both sides
    execs = [target.exec_true() for _ in range(args.execs)]
    forward = Forward(target, 8080)
    try:
        forward.get("/small")
        latencies = []
        for _ in range(args.requests):
            started = time.perf_counter()
            forward.get("/small")
            latencies.append(time.perf_counter() - started)
        expected = forward.get("/big.sha256").decode().strip()
        rates = []
        for _ in range(args.downloads):
            started = time.perf_counter()
            body = forward.get("/big")
            elapsed = time.perf_counter() - started
            if hashlib.sha256(body).hexdigest() != expected:
                raise SystemExit(f"{target.label}: the download through port-forward was corrupted")
            rates.append(len(body) / (1024 * 1024) / elapsed)
    finally:
        forward.close()
    return {
        "exec_true_seconds": stats(execs),
        "port_forward_small_get_seconds": stats(latencies),
        "port_forward_download_mib_per_second": {**stats(rates), "mib": args.mib, "sha256_checked": True},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--downloads", type=int, default=3)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args(argv)
    run = Run("kubectl_streams")
    cluster = handle.local()
    paths = paths_for(localenv_settings.load())
    cluster_images.ensure(cluster_images.TESTBOX, paths.logs_dir)
    cluster.import_images([cluster_images.TESTBOX.ref])
    settings = bench_settings()
    name = f"streams-bench-{uuid.uuid4().hex[:6]}"
    ref_ns = f"kod-sbench-{uuid.uuid4().hex[:6]}"
    results: dict[str, Any] = {}
    try:
        stack = desktop_stack.up(Progress(quiet=True), cluster=cluster, settings=settings)
        owner_ns = settings.owner_namespace
        cluster.kubectl("create", "namespace", owner_ns, check=False)
        cluster.kubectl("create", "namespace", ref_ns)
        cluster.apply(pod(name, stack.node_name, args.mib, virtual=True), namespace=owner_ns)
        cluster.apply(pod(name, WORKER, args.mib, virtual=False), namespace=ref_ns)
        targets = [Target(cluster, "virtual node", owner_ns, name), Target(cluster, "kod-worker", ref_ns, name)]
        for target in targets:
            target.wait_ready()
        # One node after the other, in the same run (the stamp's load average covers both).
        for target in targets:
            results[target.label] = measure(target, args)
    finally:
        cluster.kubectl("delete", "namespace", ref_ns, "--wait=false", check=False)
        cluster.kubectl("delete", "pod", name, "-n", settings.owner_namespace, "--wait=false", "--ignore-not-found", check=False)
        desktop_stack.down(Progress(quiet=True), cluster=cluster, settings=settings)
    rows = []
    for label, r in results.items():
        rows.append((f"{label}: kubectl exec -- true (median of {args.execs})", f"{r['exec_true_seconds']['median'] * 1000:8.1f} ms"))
        rows.append((f"{label}: port-forward small GET (median)", f"{r['port_forward_small_get_seconds']['median'] * 1000:8.1f} ms"))
        rows.append((f"{label}: port-forward {args.mib} MiB download", f"{r['port_forward_download_mib_per_second']['median']:8.1f} MiB/s"))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    run.write({"nodes": results, "parameters": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
