"""Pods on the virtual HPC node (API server -> vk_bridge -> interlink -> Slurm sidecar -> Slurm)
against sbatch of the same job scripts directly, in one run.

    flock /tmp/kod-e2e.lock .venv/bin/python bench/slurm_pods.py [--pods 20] [--rounds 3] [--sleep 2]

- pods: --pods pods created at once (one `kubectl apply` of a List) on hpc-local, each one
  container `sleep --sleep`; the time from the apply until the API shows all of them Running, and
  until all are Succeeded.
- direct: the same --pods job scripts (made by the sidecar's own code, sidecars.slurm.jobscript,
  for the same pods, their job directories staged by sidecars.slurm.staging) submitted with
  sbatch at once; Running when every job's main container has started (its state file, the
  sidecar's own definition), Succeeded when squeue shows every job COMPLETED. The staging is part
  of the direct time (the script needs its directory), and also reported alone.
- Rounds alternate pods, direct, pods, ...; ratio = pods / direct per round; the result is the
  median over the rounds. Goal: ratio <= 1.3.

Writes bench/results/slurm_pods.json (bench.results: stamped with date, commit, load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import Run  # noqa: E402
from kod import labels, wire  # noqa: E402
from localenv import settings as localenv_settings  # noqa: E402
from localenv import slurm  # noqa: E402
from localenv.progress import Progress  # noqa: E402
from sidecars.slurm import jobscript, jobstate, staging  # noqa: E402
from sidecars.slurm.images import ImageCache  # noqa: E402

IMAGE = "kod/testbox:0.1.0"
POLL = 0.1


def pod_manifest(name: str, node: str, seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"kod.io/bench": "slurm-pods"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", f"sleep {seconds}"]}],
        },
    }


def run_pods(stack: Any, namespace: str, count: int, seconds: float) -> dict[str, float]:
    cluster = stack.cluster
    tag = uuid.uuid4().hex[:5]
    items = [pod_manifest(f"bench-{tag}-{i}", stack.node_name, seconds) for i in range(count)]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    kubectl = [str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace]
    t0 = time.monotonic()
    subprocess.run([*kubectl, "apply", "-f", "-"], input=body, text=True, check=True, capture_output=True)
    running = succeeded = None
    seen_running: set[str] = set()
    while succeeded is None:
        out = subprocess.run([*kubectl, "get", "pods", "-l", "kod.io/bench=slurm-pods", "-o",
                              "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}"],
                             capture_output=True, text=True, check=True).stdout
        phases = dict(line.split() for line in out.splitlines() if len(line.split()) == 2 and tag in line)
        seen_running |= {n for n, p in phases.items() if p in ("Running", "Succeeded")}
        if running is None and len(seen_running) == count:
            running = time.monotonic() - t0
        if len(phases) == count and all(p == "Succeeded" for p in phases.values()):
            succeeded = time.monotonic() - t0
        if any(p == "Failed" for p in phases.values()):
            raise SystemExit(f"a pod failed: {phases}")
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"pods not done after 300 s: {phases}")
        time.sleep(POLL)
    subprocess.run([*kubectl, "delete", "pods", "-l", "kod.io/bench=slurm-pods", "--wait=true", "--timeout=120s"],
                   check=False, capture_output=True)
    return {"running_s": round(running or 0.0, 3), "succeeded_s": round(succeeded, 3)}


def run_direct(work: Path, images: dict[str, jobscript.ImageConfig], count: int, seconds: float,
               partition: str) -> dict[str, float]:
    plans = []
    for i in range(count):
        uid = str(uuid.uuid4())
        req = wire.PodCreateRequest.model_validate({
            "pod": {**pod_manifest(f"direct-{i}", "hpc-local", seconds), "metadata": {"name": f"direct-{i}",
                                                                                      "namespace": "bench", "uid": uid}},
            "containers": [{"name": "main", "command": ["sh", "-c", f"sleep {seconds}"]}]})
        job_dir = work / uid
        plan = jobscript.plan_job(req, images, job_dir=job_dir, sidecar="bench-direct", partition=partition,
                                  default_memory="256Mi", default_uid=0,
                                  resolve=lambda image, target: staging.resolve_in_tree(image.rootfs, target))
        plans.append((req, job_dir, plan))
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(lambda p: staging.stage(p[1], p[0], p[2], images), plans))
        staged = time.monotonic() - t0

        def submit(p: tuple[Any, Path, jobscript.JobPlan]) -> str:
            out = subprocess.run(["sbatch", "--parsable", *p[2].options], input=p[2].script, text=True,
                                 capture_output=True, check=True).stdout
            return out.strip().split(";")[0]

        job_ids = list(pool.map(submit, plans))
    running = succeeded = None
    while succeeded is None:
        if running is None and all((d / "state" / "main.0.start").exists() for _, d, _ in plans):
            running = time.monotonic() - t0
        out = subprocess.run(jobstate.SQUEUE_ARGS, capture_output=True, text=True, check=True).stdout
        jobs = jobstate.parse_jobs(out)
        states = [jobs[j].state if j in jobs else "?" for j in job_ids]
        if all(s == "COMPLETED" for s in states) and running is not None:
            succeeded = time.monotonic() - t0
        if any(s in ("FAILED", "CANCELLED", "OUT_OF_MEMORY", "TIMEOUT") for s in states):
            raise SystemExit(f"a direct job failed: {states}")
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"direct jobs not done after 300 s: {states}")
        time.sleep(POLL)
    for _, d, _ in plans:
        shutil.rmtree(d, ignore_errors=True)
    return {"running_s": round(running or 0.0, 3), "succeeded_s": round(succeeded, 3), "staging_s": round(staged, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each container runs")
    args = parser.parse_args()
    run = Run("slurm_pods")
    s = localenv_settings.load()
    stack = slurm.hpc_up(s, Progress(quiet=True))
    namespace = stack.settings.owner_namespace
    work_root = Path("/var/lib/kod-slurm/bench-direct")
    work_root.mkdir(parents=True, exist_ok=True, mode=0o711)
    cache = ImageCache(Path(f"/var/lib/kod-slurm/{stack.settings.sidecar_name}/images"), "unix:///var/run/docker.sock")
    images = {IMAGE: asyncio.run(cache.ensure(IMAGE))}
    try:
        rounds = measure(stack, namespace, work_root, images, args)
    finally:  # nothing of the benchmark is left: its pods (and so their jobs), the direct jobs
        cluster = stack.cluster
        subprocess.run([str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace, "delete",
                        "pods", "-l", "kod.io/bench=slurm-pods", "--wait=true", "--timeout=120s"], capture_output=True)
        out = subprocess.run(jobstate.SQUEUE_ARGS, capture_output=True, text=True).stdout
        for job in jobstate.parse_jobs(out).values():
            if jobscript.parse_comment("bench-direct", job.comment) and job.active:
                subprocess.run(["scancel", job.job_id], capture_output=True)
        shutil.rmtree(work_root, ignore_errors=True)
    median = {k: round(statistics.median(r["ratio"][k] for r in rounds), 3) for k in ("running_s", "succeeded_s")}
    result = {
        "pods": args.pods, "container_seconds": args.sleep, "rounds": rounds,
        "median_ratio": median, "goal_ratio": 1.3,
        "meets_goal": {k: v <= 1.3 for k, v in median.items()},
        "definitions": {
            "pods": "kubectl apply of N pods on hpc-local until the API shows all Running / all Succeeded",
            "direct": "staging + sbatch of the same N scripts at once until every main container started / squeue "
                      "shows every job COMPLETED",
        },
    }
    print(f"median ratio pods/direct: Running {median['running_s']:.2f}, Succeeded {median['succeeded_s']:.2f} "
          f"(goal <= 1.3)")
    run.write(result)


def measure(stack: Any, namespace: str, work_root: Path, images: dict[str, jobscript.ImageConfig],
            args: argparse.Namespace) -> list[dict[str, Any]]:
    # One pod first, so that the image tree exists and nothing of a first use is measured.
    run_pods(stack, namespace, 1, 0.1)
    rounds = []
    for r in range(args.rounds):
        pods = run_pods(stack, namespace, args.pods, args.sleep)
        direct = run_direct(work_root, images, args.pods, args.sleep, slurm.PARTITION)
        ratio = {k: round(pods[k] / direct[k], 3) for k in ("running_s", "succeeded_s")}
        rounds.append({"pods": pods, "direct": direct, "ratio": ratio})
        print(f"round {r + 1}: pods Running {pods['running_s']:.2f} s, Succeeded {pods['succeeded_s']:.2f} s | "
              f"direct Running {direct['running_s']:.2f} s, Succeeded {direct['succeeded_s']:.2f} s "
              f"(staging {direct['staging_s']:.2f} s) | ratio {ratio['running_s']:.2f} / {ratio['succeeded_s']:.2f}",
              flush=True)
    return rounds


if __name__ == "__main__":
    main()
