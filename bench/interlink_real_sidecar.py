"""Resident memory of interlink and the real Docker sidecar holding many pods.

    .venv/bin/python bench/interlink_real_sidecar.py [--pods 200] [--concurrency 8]

Starts `kod-docker-sidecar` and `kod-interlink` (unix sockets in a temporary directory, a sidecar
name of its own so nothing else in Docker is touched), creates --pods pods of `kod/testbox`
(`sleep`) through interlink, waits until interlink's watch reports them all Running, and prints
and writes to bench/results/interlink_real_sidecar.json:

- RSS of each process (and their sum) idle, with every pod running, and after an idle minute;
- the time to create them all and to see them all Running through the pushed status;
- the CPU time each process used during the idle minute (no polling: next to nothing);
- the time to delete them all.

The issue's target: interlink + sidecar <= 150 MiB with 200 pods.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from kod import errors  # noqa: E402
from kod.http import ApiClient  # noqa: E402
from kod.tokens import create_token_file  # noqa: E402
from kod.wire import PodCreateRequest, PodStatus, PodStatusList, WatchEvent  # noqa: E402
from bench.results import Run  # noqa: E402

BIN = Path(sys.executable).parent
IMAGE = "kod/testbox:0.1.0"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def pod(i: int, run: str) -> PodCreateRequest:
    return PodCreateRequest.model_validate({
        "pod": {
            "metadata": {"name": f"bench-{i:03d}", "namespace": f"bench-{run}", "uid": str(uuid.uuid4())},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                                     "imagePullPolicy": "IfNotPresent"}]},
        },
        "containers": [{"name": "main", "env": [], "command": ["sleep", "3600"]}],
    })


async def wait_ping(api: ApiClient) -> None:
    for _ in range(600):
        try:
            await api.request("GET", "/v1/ping", timeout=2)
            return
        except (errors.KodError, OSError):
            await asyncio.sleep(0.1)
    raise RuntimeError("no answer to ping")


async def run(pods: int, concurrency: int, idle: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="kod-bench-"))
    name = f"bench-{uuid.uuid4().hex[:6]}"
    for which in ("sidecar", "interlink"):
        create_token_file(tmp / f"{which}.token")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOD_INTERLINK_", "KOD_SIDECAR_"))}
    env.update({
        "XDG_CONFIG_HOME": str(tmp),
        "KOD_SIDECAR_LOG_LEVEL": "warning",
        "KOD_SIDECAR_CAPACITY__PODS": str(max(110, pods + 10)),
        "KOD_INTERLINK_LOG_LEVEL": "warning",
        "KOD_INTERLINK_TOKEN_FILE": str(tmp / "interlink.token"),
        "KOD_INTERLINK_SIDECARS": json.dumps([{"name": "docker", "url": f"unix://{tmp}/sidecar.sock",
                                               "token_file": str(tmp / "sidecar.token")}]),
    })
    log = open(tmp / "processes.log", "ab")
    sidecar = subprocess.Popen([str(BIN / "kod-docker-sidecar"), "--socket", str(tmp / "sidecar.sock"), "--name", name,
                                "--token-file", str(tmp / "sidecar.token")], env=env, stdout=log, stderr=subprocess.STDOUT)
    interlink = subprocess.Popen([str(BIN / "kod-interlink"), "--socket", str(tmp / "interlink.sock")],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
    dclient = docker.from_env()
    result: dict[str, object] = {"pods": pods, "concurrency": concurrency}
    api = ApiClient(f"unix://{tmp}/interlink.sock", (tmp / "interlink.token").read_text().strip(), timeout=120)
    try:
        for path in (tmp / "sidecar.sock", tmp / "interlink.sock"):
            for _ in range(600):
                if path.exists():
                    break
                await asyncio.sleep(0.1)
        await wait_ping(api)
        result["rss_idle_mib"] = {"interlink": rss_mib(interlink.pid), "sidecar": rss_mib(sidecar.pid)}

        run_id = uuid.uuid4().hex[:6]
        bodies = [pod(i, run_id) for i in range(pods)]
        lines = api.lines("/v1/watch")
        WatchEvent.model_validate_json(await anext(lines))  # the SYNC
        running: set[str] = set()

        async def watch_running() -> None:
            while len(running) < pods:
                event = WatchEvent.model_validate_json(await anext(lines))
                if event.pod is not None and event.pod.phase == "Running":
                    running.add(event.pod.name)

        watcher = asyncio.create_task(watch_running())
        sem = asyncio.Semaphore(concurrency)

        async def create(body: PodCreateRequest) -> None:
            async with sem:
                await api.request("POST", "/v1/pods", body=body, model=PodStatus)

        t0 = time.perf_counter()
        await asyncio.gather(*(create(b) for b in bodies))
        result["create_all_seconds"] = round(time.perf_counter() - t0, 2)
        await asyncio.wait_for(watcher, 600)
        result["all_running_seconds"] = round(time.perf_counter() - t0, 2)
        result["rss_with_pods_mib"] = {"interlink": rss_mib(interlink.pid), "sidecar": rss_mib(sidecar.pid)}

        # Idle: the pods run and nothing polls them, so neither process should use CPU time
        # beyond its heartbeats.
        cpu0 = sum(int(x) for x in Path(f"/proc/{interlink.pid}/stat").read_text().split()[13:15])
        scpu0 = sum(int(x) for x in Path(f"/proc/{sidecar.pid}/stat").read_text().split()[13:15])
        await asyncio.sleep(idle)
        cpu1 = sum(int(x) for x in Path(f"/proc/{interlink.pid}/stat").read_text().split()[13:15])
        scpu1 = sum(int(x) for x in Path(f"/proc/{sidecar.pid}/stat").read_text().split()[13:15])
        ticks = os.sysconf("SC_CLK_TCK")
        result["idle_seconds"] = idle
        result["idle_cpu_seconds"] = {"interlink": round((cpu1 - cpu0) / ticks, 2), "sidecar": round((scpu1 - scpu0) / ticks, 2)}
        rss = {"interlink": rss_mib(interlink.pid), "sidecar": rss_mib(sidecar.pid)}
        result["rss_after_idle_mib"] = rss
        result["rss_sum_with_pods_mib"] = round(max(
            sum(result["rss_with_pods_mib"].values()), sum(rss.values())), 1)  # type: ignore[attr-defined]
        listed = await api.request("GET", "/v1/pods", model=PodStatusList)
        result["listed"] = len([p for p in listed.items if p.namespace == f"bench-{run_id}"])

        t1 = time.perf_counter()

        async def delete(body: PodCreateRequest) -> None:
            async with sem:
                meta = body.pod.metadata
                await api.request("DELETE", f"/v1/pods/{meta.namespace}/{meta.name}",
                                  params={"uid": meta.uid, "gracePeriodSeconds": 0}, model=PodStatus)

        await asyncio.gather(*(delete(b) for b in bodies))
        result["delete_all_seconds"] = round(time.perf_counter() - t1, 2)
    finally:
        await api.close()
        for proc in (interlink, sidecar):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        for c in dclient.containers.list(all=True, ignore_removed=True, filters={"label": f"io.kod.sidecar={name}"}):
            c.remove(force=True)
        for v in dclient.volumes.list(filters={"label": f"io.kod.sidecar={name}"}):
            v.remove(force=True)
        dclient.close()
    result["target_rss_sum_mib"] = 150
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200, help="pods to run (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="creates in flight at once (default 8)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idleness measured (default 60)")
    args = parser.parse_args()
    record = Run("interlink_real_sidecar")
    result = asyncio.run(run(args.pods, args.concurrency, args.idle))
    print(json.dumps(result, indent=2))
    record.write(result)


if __name__ == "__main__":
    main()
