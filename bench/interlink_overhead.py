"""What interlink adds on the path vk_bridge -> interlink -> sidecar, and what it costs.

    .venv/bin/python bench/interlink_overhead.py [--pods 200] [--calls 200]

Runs `kod-interlink` as a real process in front of an in-process sidecar server (bench.fake_sidecar,
the same small sidecar interlink's unit tests use, so that only interlink's share is measured) and
prints, and writes to bench/results/interlink_overhead.json (stamped with date, commit and load):

- resident memory of the interlink process, idle and holding --pods pods (each with two
  container statuses) pushed through its watch;
- latency of create and get through interlink against the same call made to the sidecar
  directly (p50/p95 and the difference: interlink's overhead per hop);
- push latency: from the sidecar emitting a STATUS to interlink's watch client receiving it;
- requests interlink sends the sidecar in 10 s of idleness with all pods (no per-pod polling:
  it should be 0 besides its one open watch stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kod.http import ApiClient  # noqa: E402
from kod.wire import (  # noqa: E402
    ContainerState, ContainerStateRunning, ContainerStatus, PodCreateRequest, PodStatus, PodStatusList, WatchEvent,
)
from bench.fake_sidecar import FakeSidecar, pod_body, wait_for  # noqa: E402
from bench.results import Run  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def realistic(pod: PodStatus) -> PodStatus:
    now = time.time()
    from datetime import datetime, timezone

    started = datetime.fromtimestamp(now, tz=timezone.utc)
    statuses = [
        ContainerStatus(
            name=name,
            state=ContainerState(running=ContainerStateRunning(startedAt=started)),
            ready=True,
            started=True,
            image="kod/testbox:0.1.0",
            imageID="docker-pullable://kod/testbox@sha256:" + "a" * 64,
            containerID="docker://" + "b" * 64,
        )
        for name in ("main", "helper")
    ]
    return pod.model_copy(update={"phase": "Running", "podIP": "172.17.0.42", "startTime": started,
                                  "containerStatuses": statuses, "version": pod.version + 1})


async def run(pods: int, calls: int) -> dict[str, object]:
    fake = FakeSidecar("docker", token="side", heartbeat=10.0)
    await fake.start()
    tmp = Path(tempfile.mkdtemp(prefix="kod-bench-"))
    token_file = tmp / "interlink.token"
    sock = tmp / "interlink.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOD_INTERLINK_")}
    env.update({
        "KOD_INTERLINK_TOKEN_FILE": str(token_file),
        "KOD_INTERLINK_LISTEN__SOCKET": str(sock),
        "KOD_INTERLINK_SIDECARS": json.dumps([{"name": "docker", "url": fake.url, "token": "side"}]),
        "KOD_INTERLINK_LOG_LEVEL": "warning",
        "XDG_CONFIG_HOME": str(tmp),
    })
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).with_name("kod-interlink")), env=env)
    try:
        await wait_for(sock.exists, timeout=30, what="interlink's socket")
        via = ApiClient(f"unix://{sock}", token_file.read_text().strip())
        direct = ApiClient(fake.url, "side")
        await via.request("GET", "/v1/ping")
        rss_idle = rss_mib(proc.pid)

        # Latency: create through interlink vs directly, alternating to share the machine's noise.
        through: list[float] = []
        straight: list[float] = []
        for i in range(calls):
            for api, out, prefix in ((via, through, "v"), (direct, straight, "d")):
                body = PodCreateRequest.model_validate(pod_body(f"{prefix}-{i}", f"{prefix}-uid-{i}"))
                t0 = time.perf_counter()
                await api.request("POST", "/v1/pods", body=body, model=PodStatus)
                out.append((time.perf_counter() - t0) * 1000)
        get_through: list[float] = []
        get_straight: list[float] = []
        for i in range(calls):
            for api, out in ((via, get_through), (direct, get_straight)):
                t0 = time.perf_counter()
                await api.request("GET", f"/v1/pods/default/v-{i}", model=PodStatus)
                out.append((time.perf_counter() - t0) * 1000)
        for i in range(calls):
            await direct.request("DELETE", f"/v1/pods/default/v-{i}")
            await direct.request("DELETE", f"/v1/pods/default/d-{i}")

        # Memory with N realistic pods, pushed through the watch.
        for i in range(pods):
            pod = fake.add_pod("bench", f"pod-{i:03d}", f"uid-{i:03d}")
            fake.pods[("bench", pod.name)] = realistic(pod)
            fake.emit(WatchEvent(type="STATUS", pod=fake.pods[("bench", pod.name)]))
        while len((await via.request("GET", "/v1/pods", model=PodStatusList)).items) < pods:
            await asyncio.sleep(0.05)  # the events are still on their way through the stream

        # Push latency, measured on interlink's own watch stream.
        push: list[float] = []
        lines = via.lines("/v1/watch")
        first = await anext(lines)
        sync = WatchEvent.model_validate_json(first)
        assert sync.pods is not None and len(sync.pods) == pods, len(sync.pods or [])
        rss_loaded = rss_mib(proc.pid)
        for i in range(min(calls, pods)):
            name = f"pod-{i:03d}"
            t0 = time.perf_counter()
            fake.set_phase("bench", name, "Running", message=f"tick {i}")
            while True:
                event = WatchEvent.model_validate_json(await anext(lines))
                if event.pod is not None and event.pod.name == name and event.pod.message == f"tick {i}":
                    break
            push.append((time.perf_counter() - t0) * 1000)

        # Idle: what interlink asks the sidecar for in 10 s (its watch stream is one request).
        before = len([s for s in fake.seen if s.path != "/v1/watch"])
        await asyncio.sleep(10)
        idle_requests = len([s for s in fake.seen if s.path != "/v1/watch"]) - before
        rss_after = rss_mib(proc.pid)
        await via.close()
        await direct.close()
    finally:
        proc.terminate()
        await proc.wait()
        await fake.stop()

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values), 3), "p95": round(pct(values, 0.95), 3)}

    create_via, create_direct = summary(through), summary(straight)
    get_via, get_direct = summary(get_through), summary(get_straight)
    return {
        "pods": pods,
        "calls": calls,
        "rss_mib": {"idle": round(rss_idle, 1), "with_pods": round(rss_loaded, 1), "after": round(rss_after, 1)},
        "create_ms": {"via_interlink": create_via, "direct": create_direct,
                      "overhead_p50": round(create_via["p50"] - create_direct["p50"], 3)},
        "get_ms": {"via_interlink": get_via, "direct": get_direct,
                   "overhead_p50": round(get_via["p50"] - get_direct["p50"], 3)},
        "push_ms": summary(push),
        "idle_requests_to_sidecar_in_10s": idle_requests,
        "exit_code": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200, help="pods held while measuring memory (default 200)")
    parser.add_argument("--calls", type=int, default=200, help="calls per latency sample (default 200)")
    args = parser.parse_args()
    record = Run("interlink_overhead")
    result = asyncio.run(run(args.pods, args.calls))
    print(json.dumps(result, indent=2))
    record.write(result)


if __name__ == "__main__":
    main()
