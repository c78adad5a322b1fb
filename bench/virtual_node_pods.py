"""Pods on the virtual node against the Docker engine itself, through the whole chain
(API server -> vk_bridge -> interlink -> Docker sidecar -> Docker).

    .venv/bin/python bench/virtual_node_pods.py [--sequential 20] [--burst 50] [--rounds 3] [--deletes 10]

- sequential: one pod at a time (bound to the node at creation), from the moment it exists in the
  API bound to the node until the API shows it Running. Raw latency, and the overhead once the
  Docker engine's own work is taken off, from the engine's events: "vs container" subtracts the
  engine's create-to-start time of the pod's container (the issue's definition), "vs engine" the
  engine's span from the pod's first container create to the main container's start (which also
  holds the infra container's start and the sidecar's steps between engine calls).
  Targets: overhead p50 <= 100 ms, p95 <= 300 ms.
- burst: --burst pods created at once until all are Running in the API, against `docker run -d`
  of the same number of containers at once through the Engine API, in the same run, alternating
  --rounds times. ratio = pods / docker (target <= 1.5), per round; the result is the median of
  the rounds (one lucky round proves nothing on a shared machine). For context, also the engine doing what
  these pods need, driven directly: an infra (pause) container per pod plus the main container in
  its network namespace, 2 containers per pod, which is the sidecar's design.
- delete: `kubectl delete pod --grace-period=0 --force` of a running pod until its containers are
  gone from Docker and its object from the API (target p50 <= 1 s; kubectl accepts
  --grace-period=0 only with --force: "Can only be set to 0 when --force is true"). Also the
  graceful path, `--now` (grace 1 s) of a pod whose process exits on SIGTERM: vk_bridge stops the
  containers through InterLink, then removes the object.

Prints a table and writes bench/results/virtual_node_pods.json (stamped with date, commit and
load average; only the parts this run measured, see --only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
import uuid
from typing import Any

from virtual_node_common import (
    DOCKER,
    IMAGE,
    PAUSE,
    Bench,
    ms,
    running_bench,
    summary,
    table,
)

from bench.results import Run


async def sequential(b: Bench, n: int) -> dict[str, Any]:
    raw, vs_container, vs_engine, before, after = [], [], [], [], []
    for i in range(n):
        name = f"seq-{i}"
        uid, bound = await b.create(b.pod(name))
        await b.wait(lambda: uid in b.pods and b.pods[uid].running is not None, 60, f"{name} Running")
        await b.wait(lambda: (uid, "main", "start") in b.events, 10, f"{name}'s start event")
        latency = b.pods[uid].running - bound  # type: ignore[operator]
        main, span = b.engine_times(uid)
        raw.append(latency)
        vs_container.append(latency - main)
        vs_engine.append(latency - span)
        first_create = min(b.events[(uid, "infra", "create")], b.events[(uid, "main", "create")])
        before.append(first_create - bound)
        after.append(b.pods[uid].running - b.events[(uid, "main", "start")])  # type: ignore[operator]
        await b.delete(name)
        await b.wait(lambda: b.pods[uid].deleted is not None, 60, f"{name} deleted")
    return {"n": n, "raw_latency_s": summary(raw), "overhead_vs_container_s": summary(vs_container),
            "overhead_vs_engine_s": summary(vs_engine),
            # The chain's own time, from exact event times: bound -> the engine creates the pod's
            # first container (vk_bridge, interlink, sidecar), and the main container's start ->
            # Running in the API (the pushed status through interlink and vk_bridge's status write).
            "chain_before_engine_s": summary(before), "chain_after_engine_s": summary(after)}


async def burst_pods(b: Bench, n: int, tag: str) -> float:
    names = [f"burst-{tag}-{i}" for i in range(n)]
    t0 = time.time()
    created = await asyncio.gather(*(b.create(b.pod(nm)) for nm in names))
    uids = [uid for uid, _ in created]
    await b.wait(lambda: all(b.pods.get(u) and b.pods[u].running for u in uids), 300, f"{n} pods Running")
    took = max(b.pods[u].running for u in uids) - t0  # type: ignore[type-var]
    await asyncio.gather(*(b.delete(nm) for nm in names))
    await b.wait(lambda: all(b.pods[u].deleted for u in uids), 300, "burst pods deleted")
    return float(took)


async def burst_docker(b: Bench, n: int) -> float:
    """`docker run -d` of n containers at once, through the Engine API (create + start)."""
    label = f"kod.bench={uuid.uuid4().hex[:8]}"
    body = {"Image": IMAGE, "Cmd": ["sleep", "3600"], "Labels": {"kod.bench": label.split("=")[1]},
            "HostConfig": {"AutoRemove": False}}

    async def run_one(i: int) -> str:
        async with b.docker.post(f"{DOCKER}/containers/create", json=body) as r:
            cid = (await r.json())["Id"]
        async with b.docker.post(f"{DOCKER}/containers/{cid}/start") as r:
            assert r.status in (204, 304), await r.text()
        return str(cid)

    t0 = time.time()
    ids = await asyncio.gather(*(run_one(i) for i in range(n)))
    took = time.time() - t0
    await asyncio.gather(*(b.docker.delete(f"{DOCKER}/containers/{c}", params={"force": "true"}) for c in ids))
    return took


#: A main process that exits on SIGTERM (a plain `sleep` as PID 1 ignores it and waits for SIGKILL).
TERM_AWARE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"]


async def burst_docker_pods(b: Bench, n: int) -> float:
    """What the engine must do for n pods of this design, driven directly: per pod an infra
    container (the network namespace, from the pause image) and the main container joined to it."""
    async def run(body: dict[str, Any]) -> str:
        async with b.docker.post(f"{DOCKER}/containers/create", json=body) as r:
            cid = (await r.json())["Id"]
        async with b.docker.post(f"{DOCKER}/containers/{cid}/start") as r:
            assert r.status in (204, 304), await r.text()
        return str(cid)

    async def pod(i: int) -> list[str]:
        infra = await run({"Image": PAUSE, "Labels": {"kod.bench": "pod-baseline"}, "HostConfig": {"IpcMode": "shareable"}})
        main = await run({"Image": IMAGE, "Cmd": ["sleep", "3600"], "Labels": {"kod.bench": "pod-baseline"},
                          "HostConfig": {"NetworkMode": f"container:{infra}", "IpcMode": f"container:{infra}"}})
        return [main, infra]

    t0 = time.time()
    ids = [c for pair in await asyncio.gather(*(pod(i) for i in range(n))) for c in pair]
    took = time.time() - t0
    for c in ids:
        await b.docker.delete(f"{DOCKER}/containers/{c}", params={"force": "true"})
    return took


async def deletes(b: Bench, n: int, flags: list[str], tag: str) -> dict[str, Any]:
    names = [f"del-{tag}-{i}" for i in range(n)]
    created = await asyncio.gather(*(b.create(b.pod(nm, TERM_AWARE)) for nm in names))
    uids = dict(zip(names, (u for u, _ in created), strict=True))
    await b.wait(lambda: all(b.pods.get(u) and b.pods[u].running for u in uids.values()), 120, "pods Running")
    cluster = b.stack.cluster
    took = []
    for name, uid in uids.items():
        t0 = time.time()
        proc = await asyncio.to_thread(
            subprocess.run,
            [str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "delete", "pod", name, "-n", b.namespace,
             *flags, "--wait=false"],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        await b.wait(lambda uid=uid: b.pods[uid].deleted is not None and (uid, "main", "destroy") in b.events
                     and (uid, "infra", "destroy") in b.events, 60, f"{name} gone")
        done = max(b.pods[uid].deleted, b.events[(uid, "main", "destroy")], b.events[(uid, "infra", "destroy")])  # type: ignore[type-var]
        took.append(done - t0)
    return {"n": n, "flags": flags, "delete_to_gone_s": summary(took)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds; the median is reported")
    parser.add_argument("--deletes", type=int, default=10)
    parser.add_argument("--only", choices=["sequential", "burst", "delete"], action="append",
                        help="run only these parts (repeatable); default all")
    args = parser.parse_args()
    parts = set(args.only or ["sequential", "burst", "delete"])
    run = Run("virtual_node_pods")
    results: dict[str, Any] = {"parts": sorted(parts)}
    rows: list[tuple[str, str]] = []
    async with running_bench() as b:
        print(f"private virtual node {b.node}; namespace {b.namespace}")
        await sequential(b, 2)  # warm-up (first-use costs: connections, caches)
        if "sequential" in parts:
            s = results["sequential"] = await sequential(b, args.sequential)
            rows += [
                (f"sequential ({s['n']}): raw bound->Running p50/p95", f"{ms(s['raw_latency_s']['p50'])} / {ms(s['raw_latency_s']['p95'])}"),
                ("  overhead vs container create+start p50/p95", f"{ms(s['overhead_vs_container_s']['p50'])} / {ms(s['overhead_vs_container_s']['p95'])}   (target 100 / 300 ms)"),
                ("  overhead vs engine span p50/p95", f"{ms(s['overhead_vs_engine_s']['p50'])} / {ms(s['overhead_vs_engine_s']['p95'])}"),
                ("    of which bound -> first container create", f"{ms(s['chain_before_engine_s']['p50'])} / {ms(s['chain_before_engine_s']['p95'])}"),
                ("    of which main started -> Running in API", f"{ms(s['chain_after_engine_s']['p50'])} / {ms(s['chain_after_engine_s']['p95'])}"),
            ]
        if "burst" in parts:
            rounds = []
            for r in range(args.rounds):
                d = await burst_docker(b, args.burst)
                p = await burst_pods(b, args.burst, str(r))
                e = await burst_docker_pods(b, args.burst)
                rounds.append({"docker_s": round(d, 3), "pods_s": round(p, 3), "ratio": round(p / d, 3),
                               "engine_pods_s": round(e, 3), "ratio_vs_engine_pods": round(p / e, 3),
                               "loadavg": os.getloadavg()[0]})
            bu = results["burst"] = {
                "n": args.burst, "rounds": rounds,
                "ratio_median": round(statistics.median(x["ratio"] for x in rounds), 3),
                "ratio_vs_engine_pods_median": round(statistics.median(x["ratio_vs_engine_pods"] for x in rounds), 3),
                "ratio_worst": max(x["ratio"] for x in rounds),
            }
            rows += [(f"burst {bu['n']} round {i + 1}: pods / docker run -d",
                      f"{r['pods_s']:.2f} s / {r['docker_s']:.2f} s = {r['ratio']:.2f}   (vs the engine doing the pods' "
                      f"2 containers each: {r['engine_pods_s']:.2f} s = {r['ratio_vs_engine_pods']:.2f}; load {r['loadavg']:.1f})")
                     for i, r in enumerate(rounds)]
            rows.append((f"  ratio, median of {len(rounds)} rounds (worst)",
                         f"{bu['ratio_median']:.2f} ({bu['ratio_worst']:.2f})   (target <= 1.5)"))
        if "delete" in parts:
            de = results["delete"] = await deletes(b, args.deletes, ["--grace-period=0", "--force"], "force")
            dg = results["delete_graceful"] = await deletes(b, args.deletes, ["--now"], "now")
            rows += [
                (f"delete --grace-period=0 --force ({de['n']}) p50/p95", f"{ms(de['delete_to_gone_s']['p50'])} / {ms(de['delete_to_gone_s']['p95'])}   (target p50 <= 1 s)"),
                (f"delete --now (grace 1 s, SIGTERM honoured) ({dg['n']}) p50/p95", f"{ms(dg['delete_to_gone_s']['p50'])} / {ms(dg['delete_to_gone_s']['p95'])}"),
            ]
    print(f"\nvirtual node pods ({b.node}; load average {run.load_start[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    table(rows)
    run.write(results)


if __name__ == "__main__":
    asyncio.run(main())
