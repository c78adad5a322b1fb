"""The Docker sidecar as a process (`python -m sidecars.docker`) killed with SIGKILL in the middle
of creating pods, then started again: nothing duplicated, nothing orphaned, statuses converge.
And SIGTERM: a clean, quick exit that leaves the pods running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kod import errors, wire
from kod.http import ApiClient
from tests.e2e.docker_sidecar_support import PAUSE, SidecarClient, b64, build_test_images, container, status_of, sweep

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sidecar_images(docker_engine: Any, localenv_config: Any) -> None:
    build_test_images(docker_engine, localenv_config)


class SidecarProcess:
    """`python -m sidecars.docker` on a unix socket, started and stopped by PID."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.socket = workdir / "sidecar.sock"
        self.token_file = workdir / "token"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "KOD_SIDECAR_INFRA_IMAGE": PAUSE,
            "KOD_SIDECAR_RESTART__INITIAL_SECONDS": "1",
            "KOD_SIDECAR_RESTART__MAX_SECONDS": "2",
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }
        self.starts += 1
        log = open(self.workdir / f"sidecar-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecars.docker", "--socket", str(self.socket), "--name", self.name,
             "--token-file", str(self.token_file), "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("sidecar-*.log")))


async def until_healthy(proc: SidecarProcess, timeout: float = 60) -> None:
    """Wait for /healthz to answer 200 on the sidecar's socket (or the process to die)."""
    import aiohttp

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
        if proc.socket.exists():
            try:
                async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proc.socket))) as s:
                    async with s.get("http://localhost/healthz") as resp:
                        if resp.status == 200:
                            return
            except aiohttp.ClientError:
                pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the sidecar did not become healthy:\n" + proc.log_text()[-3000:])
        await asyncio.sleep(0.1)


@pytest.fixture
def process(sidecar_images: None, docker_engine: Any, tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path, f"t-{uuid.uuid4().hex[:8]}")
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill(signal.SIGKILL)
    sweep(docker_engine, proc.name)


@pytest.fixture
async def client(process: SidecarProcess, docker_engine: Any) -> AsyncIterator[SidecarClient]:
    process.start()
    await until_healthy(process)
    api = ApiClient(f"unix://{process.socket}", process.token_file.read_text().strip(), timeout=60)
    c = SidecarClient(api=api, name=process.name, namespace=f"ns-{process.name}", docker=docker_engine)
    yield c
    await c.api.close()


def workload(c: SidecarClient) -> dict[str, wire.PodCreateRequest]:
    """Twelve pods of four kinds."""
    reqs: dict[str, wire.PodCreateRequest] = {}
    for i in range(4):
        reqs[f"long-{i}"] = c.request(f"long-{i}", [container("main", "exec sleep 3600")], restartPolicy="Always")
        reqs[f"quick-{i}"] = c.request(f"quick-{i}", [container("main", f"echo quick {i}")])
    for i in range(2):
        reqs[f"init-{i}"] = c.request(
            f"init-{i}",
            [container("main", "cat /s/key; exec sleep 3600", volumeMounts=[{"name": "s", "mountPath": "/s"}])],
            initContainers=[container("prepare", "sleep 1")],
            restartPolicy="Always",
            volumes=[{"name": "s", "secret": {"secretName": "s"}}],
            contents=[{"name": "s", "files": [{"path": "key", "data": b64(f"secret {i}\n".encode())}]}],
        )
        reqs[f"crash-{i}"] = c.request(f"crash-{i}", [container("main", "exit 1")], restartPolicy="Always")
    return reqs


def converged(name: str, st: wire.PodStatus) -> bool:
    main = status_of(st, "main")
    if name.startswith(("long", "init")):
        return st.phase == "Running" and main.state.running is not None
    if name.startswith("quick"):
        return st.phase == "Succeeded"
    return st.phase == "Running" and main.restartCount >= 1


async def test_kill_9_while_creating_then_restart_no_duplicates_no_orphans_statuses_converge(
    process: SidecarProcess, client: SidecarClient
) -> None:
    reqs = workload(client)
    # Two pods run before the kill: they must survive it untouched.
    for name in ("long-0", "long-1"):
        await client.create(reqs[name])
    before = {n: await client.wait(n, lambda s, n=n: converged(n, s)) for n in ("long-0", "long-1")}
    rest = [n for n in reqs if n not in before]
    tasks = {n: asyncio.ensure_future(client.create(reqs[n])) for n in rest}
    done_count = 0
    for fut in asyncio.as_completed(list(tasks.values())):
        try:
            await fut
        except errors.KodError:
            pass
        done_count += 1
        if done_count == len(rest) // 2:
            break
    assert process.kill(signal.SIGKILL) == -signal.SIGKILL
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert any(isinstance(r, wire.PodStatus) for r in results)

    process.start()
    await until_healthy(process)
    # The virtual kubelet re-sends every create it is not sure of; creates are idempotent by uid.
    for name, req in reqs.items():
        st = await client.create(req)
        assert st.uid == req.pod.metadata.uid, name
    finals = {n: await client.wait(n, lambda s, n=n: converged(n, s), timeout=120) for n in reqs}

    for name in ("long-0", "long-1"):
        assert status_of(finals[name], "main").containerID == status_of(before[name], "main").containerID
        assert status_of(finals[name], "main").restartCount == 0
    for i in range(2):
        assert await _logs_when_written(client, f"init-{i}") == f"secret {i}\n"
    uids = {req.pod.metadata.uid for req in reqs.values()}
    containers = client.containers()
    infra = Counter(c.labels["io.kod.pod.uid"] for c in containers if c.labels.get("io.kod.role") == "infra")
    assert set(infra) == uids and set(infra.values()) == {1}, infra
    assert {c.labels["io.kod.pod.uid"] for c in containers} == uids  # no orphans
    runs = Counter((c.labels["io.kod.pod.uid"], c.labels["io.kod.container.name"], c.labels["io.kod.container.attempt"])
                   for c in containers if c.labels.get("io.kod.role") != "infra")
    assert set(runs.values()) == {1}
    running = Counter(c.labels["io.kod.pod.uid"] for c in containers
                      if c.labels.get("io.kod.role") == "main" and c.status == "running")
    for name in [n for n in reqs if n.startswith(("long", "init"))]:
        assert running[reqs[name].pod.metadata.uid] == 1, name
    volume_uids = {v.attrs["Labels"].get("io.kod.pod.uid") for v in client.volumes()}
    assert volume_uids <= uids
    listed = await client.api.request("GET", "/v1/pods", model=wire.PodStatusList)
    assert sorted(p.uid for p in listed.items) == sorted(uids)


async def test_sigterm_stops_cleanly_and_the_pods_keep_running(process: SidecarProcess, client: SidecarClient) -> None:
    req = client.request("stay", [container("main", "exec sleep 3600")], restartPolicy="Always")
    await client.create(req)
    st = await client.wait("stay", lambda s: converged("long", s))
    watch = asyncio.ensure_future(_drain(client.api.lines("/v1/watch")))
    assert process.kill(signal.SIGTERM) == 0
    await asyncio.wait_for(watch, 10)  # open streams end with the process
    assert "stopping (pods keep running in Docker)" in process.log_text()
    main = [c for c in client.containers(req.pod.metadata.uid) if c.labels.get("io.kod.role") == "main"]
    assert len(main) == 1 and main[0].status == "running"
    process.start()
    await until_healthy(process)
    again = await client.get("stay")
    assert again.phase == "Running" and status_of(again, "main").containerID == status_of(st, "main").containerID


async def _logs_when_written(client: SidecarClient, name: str, timeout: float = 15) -> str:
    """The container's log once it printed something (it may be Running a moment before)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = await client.logs(name, "main")
        if text or asyncio.get_running_loop().time() > deadline:
            return text
        await asyncio.sleep(0.2)


async def _drain(lines: AsyncIterator[bytes]) -> None:
    try:
        async for _ in lines:
            pass
    except errors.Unavailable:
        pass


async def test_a_follower_that_goes_away_closes_the_log_stream_of_a_silent_container(
    process: SidecarProcess, client: SidecarClient
) -> None:
    await client.create(client.request("silent", [container("main", "exec sleep 3600")], restartPolicy="Always"))
    await client.wait("silent", lambda s: converged("long", s))
    path = f"/v1/pods/{client.namespace}/silent/containers/main/logs"
    reader = asyncio.ensure_future(_drain(client.api.stream("GET", path, params={"follow": True})))
    await asyncio.sleep(1)  # the stream is open and idle: the container prints nothing
    assert not reader.done()
    reader.cancel()  # the client goes away (^C on `kubectl logs -f`)
    deadline = asyncio.get_running_loop().time() + 10
    while "log stream closed" not in process.log_text():
        assert asyncio.get_running_loop().time() < deadline, "the sidecar kept the log stream open"
        await asyncio.sleep(0.1)


async def test_kill_9_during_a_graceful_delete_then_restart_finishes_the_delete(
    process: SidecarProcess, client: SidecarClient
) -> None:
    req = client.request("stubborn", [container("main", 'trap "" TERM; while true; do sleep 0.1; done')])
    await client.create(req)
    await client.wait("stubborn", lambda s: status_of(s, "main").state.running is not None)
    uid = req.pod.metadata.uid
    deleting = asyncio.ensure_future(client.delete("stubborn", grace=60))
    # Wait until the delete marked the pod (renamed its infra container), then kill the sidecar.
    deadline = asyncio.get_running_loop().time() + 20
    while not any(c.name.endswith("_deleting") for c in client.containers(uid)):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    process.kill(signal.SIGKILL)
    with pytest.raises(errors.Unavailable):
        await deleting
    process.start()
    await until_healthy(process)
    # The new process finishes the delete by itself (at once: the grace period was spent waiting).
    deadline = asyncio.get_running_loop().time() + 30
    while client.containers(uid) or client.volumes(uid):
        assert asyncio.get_running_loop().time() < deadline, [c.name for c in client.containers(uid)]
        await asyncio.sleep(0.2)
    with pytest.raises(errors.NotFound):
        await client.get("stubborn")
    assert "refused deleting" not in process.log_text()
