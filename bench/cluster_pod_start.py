"""Pod start-up on the local cluster's real node: `kubectl apply` of a pod until it is Running.

    .venv/bin/python bench/cluster_pod_start.py [--runs 10]

Each run applies one pod (kod/testbox, `sleep`, imagePullPolicy IfNotPresent, pinned to the real
node) with the kubectl binary, as a user would, and measures from the start of `kubectl apply`
until a watch (opened before) sees phase Running; the pod is deleted before the next run. Prints
the runs and the median; writes bench/results/cluster_pod_start.json (stamped with date, commit
and load average).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, watch  # noqa: E402

from bench.results import Run  # noqa: E402
from localenv import cluster_images, handle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    run = Run("cluster_pod_start")

    c = handle.local()
    c.import_images([cluster_images.TESTBOX.ref])
    api = client.CoreV1Api(c.api_client())
    ns = f"bench-pod-start-{uuid.uuid4().hex[:6]}"
    c.kubectl("create", "namespace", ns)
    times: list[float] = []
    try:
        for i in range(args.runs):
            name = f"p{i}"
            pod = {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": c.node_name},
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "main", "image": cluster_images.TESTBOX.ref,
                                    "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
                },
            }
            w = watch.Watch()
            stream = w.stream(api.list_namespaced_pod, ns, field_selector=f"metadata.name={name}", timeout_seconds=120)
            started = time.monotonic()
            c.kubectl("apply", "-f", "-", input=json.dumps(pod))
            for event in stream:
                if event["object"].status.phase == "Running":
                    times.append(time.monotonic() - started)
                    w.stop()
                    break
            else:
                raise SystemExit(f"pod {name} did not reach Running within 120 s")
            print(f"run {i + 1:>2}: {times[-1]:.2f} s", flush=True)
            c.kubectl("delete", "pod", name, "-n", ns, "--grace-period=0", "--wait=true", timeout=120)
    finally:
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    result = {
        "runs": len(times),
        "seconds": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }
    print(f"kubectl apply -> Running, median of {len(times)}: {result['median_s']:.2f} s "
          f"(min {result['min_s']:.2f}, max {result['max_s']:.2f})")
    run.write(result)


if __name__ == "__main__":
    main()
