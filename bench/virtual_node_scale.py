"""Many pods on the virtual node: memory of the desktop stack, and what vk_bridge costs the API
server while the pods are idle.

    .venv/bin/python bench/virtual_node_scale.py [--pods 200] [--idle-seconds 60]

1. With no pod on the node, vk_bridge's API requests per minute over --idle-seconds (read from its
   own counters, served at /metrics of its kubelet API and fetched the way Prometheus would, through
   the API server's node proxy; the SubjectAccessReviews those fetches cause are left out).
2. --pods pods created at once, until all are Running; the time it took.
3. Resident memory (VmRSS) of vk_bridge, and of interlink + the Docker sidecar, with the pods running.
4. The same idle window with the pods running: the requests per minute must not grow with the
   number of pods (nothing is polled per pod; status is pushed).

Targets: vk_bridge <= 150 MiB, interlink + sidecar <= 150 MiB, idle requests/minute flat.
Writes bench/results/virtual_node_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from virtual_node_common import Bench, rss_mib, running_bench, table

from bench.results import Run

#: Requests vk_bridge makes because the benchmark reads its metrics, not because of pods.
SELF_INFLICTED = ("subjectaccessreviews", "tokenreviews")


async def vk_requests(b: Bench) -> dict[str, float]:
    cluster = b.stack.cluster
    proc = await asyncio.to_thread(cluster.kubectl, "get", "--raw", f"/api/v1/nodes/{b.node}/proxy/metrics")
    counts: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("kod_vk_api_requests_total{"):
            labels_part, value = line.rsplit(" ", 1)
            if not any(s in labels_part for s in SELF_INFLICTED):
                counts[labels_part] = float(value)
    return counts


async def idle_rate(b: Bench, seconds: float) -> dict[str, Any]:
    before = await vk_requests(b)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window itself: nothing to wait for
    after = await vk_requests(b)
    minutes = (time.monotonic() - t0) / 60
    per_key = {k: round((after.get(k, 0) - before.get(k, 0)) / minutes, 2) for k in after if after.get(k, 0) != before.get(k, 0)}
    return {"per_minute": round(sum(after.values()) - sum(before.values()), 2) / minutes, "by_request": per_key,
            "window_s": round(minutes * 60, 1)}


async def settled(b: Bench, quiet: float = 5.0, timeout: float = 120.0) -> None:
    """Wait until vk_bridge wrote no pod status for `quiet` seconds: the burst is over."""
    deadline = time.monotonic() + timeout
    last = await vk_requests(b)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = await vk_requests(b)
        if all(now.get(k) == v for k, v in last.items() if "pods/status" in k or "POST" in k):
            return
        last = now


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    run = Run("virtual_node_scale")
    results: dict[str, Any] = {"pods": args.pods}
    async with running_bench() as b:
        print(f"private virtual node {b.node}; namespace {b.namespace}")
        await vk_requests(b)  # the first fetch pays for an authorization review; not counted
        results["idle_no_pods"] = await idle_rate(b, args.idle_seconds)
        results["rss_no_pods_mib"] = {"vk": rss_mib(b.pid("vk")), "interlink": rss_mib(b.pid("interlink")),
                                      "sidecar": rss_mib(b.pid("sidecar"))}
        names = [f"scale-{i}" for i in range(args.pods)]
        t0 = time.time()
        sem = asyncio.Semaphore(20)

        async def create(name: str) -> str:
            async with sem:
                uid, _ = await b.create(b.pod(name))
                return uid

        uids = await asyncio.gather(*(create(n) for n in names))
        await b.wait(lambda: all(b.pods.get(u) and b.pods[u].running for u in uids), 900, f"{args.pods} pods Running")
        results["all_running_s"] = round(max(b.pods[u].running for u in uids) - t0, 2)  # type: ignore[type-var]
        rss = {"vk": rss_mib(b.pid("vk")), "interlink": rss_mib(b.pid("interlink")), "sidecar": rss_mib(b.pid("sidecar"))}
        results["rss_mib"] = {k: round(v, 1) for k, v in rss.items()}
        results["rss_mib"]["interlink+sidecar"] = round(rss["interlink"] + rss["sidecar"], 1)
        await settled(b)
        results["idle_with_pods"] = await idle_rate(b, args.idle_seconds)
        results["rss_after_idle_mib"] = {"vk": round(rss_mib(b.pid("vk")), 1)}
    r = results
    print(f"\nvirtual node at scale ({args.pods} pods)")
    table([
        (f"{args.pods} pods created at once -> all Running", f"{r['all_running_s']:.1f} s"),
        ("RSS vk_bridge", f"{r['rss_mib']['vk']:.1f} MiB (no pods: {r['rss_no_pods_mib']['vk']:.1f})   (target <= 150)"),
        ("RSS interlink + sidecar", f"{r['rss_mib']['interlink+sidecar']:.1f} MiB   (target <= 150)"),
        ("idle API requests/min, no pods", f"{r['idle_no_pods']['per_minute']:.1f}  {r['idle_no_pods']['by_request']}"),
        (f"idle API requests/min, {args.pods} pods", f"{r['idle_with_pods']['per_minute']:.1f}  {r['idle_with_pods']['by_request']}"),
    ])
    run.write(results)


if __name__ == "__main__":
    asyncio.run(main())
