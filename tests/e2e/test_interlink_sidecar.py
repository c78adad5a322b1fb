"""interlink in front of the real Docker sidecar, both as processes, without the cluster: pods run
in the real Docker engine, status is pushed, logs stream, and kill -9 of either process loses
nothing and duplicates nothing.

Each test runs its own `kod-docker-sidecar` (with a name of its own, which labels every Docker
object it makes, so the desktop's own sidecar and other tests are never touched) and its own
`kod-interlink`, both on unix sockets in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kod import errors
from kod.http import ApiClient
from kod.tokens import create_token_file
from kod.wire import NodeInfo, PodCreateRequest, PodStatus, PodStatusList, WatchEvent
from localenv import cluster_images
from localenv.paths import paths_for
from localenv import settings as localenv_settings
from tests.e2e.docker_sidecar_support import sweep

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
SIDECAR_LABEL = "io.kod.sidecar"


@pytest.fixture(scope="module")
def images(docker_engine: Any) -> str:
    """The sidecar's infra image and the tiny test image, built when missing."""
    logs = paths_for(localenv_settings.load()).logs_dir
    cluster_images.ensure(cluster_images.PAUSE, logs)
    cluster_images.ensure(cluster_images.TESTBOX, logs)
    return cluster_images.TESTBOX.ref


async def wait_until(check: Any, *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Call `check()` (sync or async) every 50 ms until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Desk:
    """The two processes, their sockets and tokens, and the Docker objects they make."""

    root: Path
    docker: Any
    name: str = field(default_factory=lambda: f"il-e2e-{uuid.uuid4().hex[:6]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def interlink_sock(self) -> Path:
        return self.root / "interlink.sock"

    @property
    def sidecar_sock(self) -> Path:
        return self.root / "sidecar.sock"

    def token(self, which: str) -> str:
        return (self.root / f"{which}.token").read_text().strip()

    def log(self, which: str) -> str:
        return (self.root / f"{which}.log").read_text(errors="replace")

    def start(self, which: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KOD_INTERLINK_", "KOD_SIDECAR_"))}
        env["XDG_CONFIG_HOME"] = str(self.root / "config")
        if which == "sidecar":
            sock = self.sidecar_sock
            argv = [str(BIN / "kod-docker-sidecar"), "--socket", str(sock), "--name", self.name,
                    "--token-file", str(self.root / "sidecar.token")]
        else:
            sock = self.interlink_sock
            env["KOD_INTERLINK_SIDECARS"] = json.dumps(
                [{"name": "docker", "url": f"unix://{self.sidecar_sock}", "token_file": str(self.root / "sidecar.token")}]
            )
            env["KOD_INTERLINK_TOKEN_FILE"] = str(self.root / "interlink.token")
            argv = [str(BIN / "kod-interlink"), "--socket", str(sock)]
        sock.unlink(missing_ok=True)
        out = open(self.root / f"{which}.log", "ab")
        self.procs[which] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self, which: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(which)
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def api(self, which: str = "interlink") -> ApiClient:
        sock = self.interlink_sock if which == "interlink" else self.sidecar_sock
        return ApiClient(f"unix://{sock}", self.token(which))

    def containers(self, uid: str | None = None) -> list[Any]:
        wanted = [f"{SIDECAR_LABEL}={self.name}"] + ([f"io.kod.pod.uid={uid}"] if uid else [])
        return self.docker.containers.list(all=True, ignore_removed=True, filters={"label": wanted})

    def cleanup(self) -> None:
        for which in list(self.procs):
            self.kill(which)
        # Containers, volumes and the pods' network with its host rules: each test's sidecar
        # makes a network of its own, and Docker has address pools for only about thirty.
        sweep(self.docker, self.name)


async def ready(desk: Desk, which: str) -> None:
    api = desk.api(which)

    async def answers() -> bool:
        try:
            await api.request("GET", "/v1/ping", timeout=2)
            return True
        except (errors.KodError, OSError):
            return False

    try:
        await wait_until(answers, timeout=60, what=f"{which} to answer ping")
    finally:
        await api.close()


@pytest.fixture
async def desk(tmp_path: Path, images: str, docker_engine: Any) -> AsyncIterator[Desk]:
    d = Desk(root=tmp_path, docker=docker_engine)
    for which in ("sidecar", "interlink"):
        create_token_file(tmp_path / f"{which}.token")
    d.start("sidecar")
    await ready(d, "sidecar")
    d.start("interlink")
    await ready(d, "interlink")
    try:
        yield d
    finally:
        d.cleanup()


def pod(name: str, image: str, script: str, *, uid: str | None = None, **spec: Any) -> PodCreateRequest:
    """A pod with one container running `sh -c script`, resolved as vk_bridge sends it."""
    return PodCreateRequest.model_validate({
        "pod": {
            "metadata": {"name": name, "namespace": "e2e", "uid": uid or str(uuid.uuid4())},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script],
                                     **spec.pop("container", {})}], **spec},
        },
        "containers": [{"name": "main", "env": [], "command": ["sh", "-c", script]}],
    })


class Watch:
    """interlink's watch stream as events."""

    def __init__(self, api: ApiClient) -> None:
        self._lines = api.lines("/v1/watch")

    async def next(self, timeout: float = 30.0) -> WatchEvent:
        while True:
            event = WatchEvent.model_validate_json(await asyncio.wait_for(anext(self._lines), timeout))
            if event.type != "HEARTBEAT":
                return event

    async def until(self, name: str, phase: str | None = None, type_: str = "STATUS", timeout: float = 60.0) -> PodStatus:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next(max(0.1, deadline - loop.time()))
            if event.type == type_ and event.pod is not None and event.pod.name == name:
                if phase is None or event.pod.phase == phase:
                    return event.pod


async def test_a_pod_runs_in_docker_reports_its_exit_and_its_log(desk: Desk, images: str) -> None:
    api = desk.api()
    watch = Watch(api)
    try:
        assert (await watch.next()).type == "SYNC"
        created = await api.request("POST", "/v1/pods", body=pod("hello", images, "echo hello from docker; exit 3"),
                                    model=PodStatus)
        assert created.sidecar == "docker"
        failed = await watch.until("hello", "Failed")
        term = failed.containerStatuses[0].state.terminated
        assert term is not None and term.exitCode == 3
        assert failed.sidecar == "docker"
        log = b"".join([c async for c in api.stream("GET", "/v1/pods/e2e/hello/containers/main/logs")])
        assert log == b"hello from docker\n"
        assert len(desk.containers(created.uid)) >= 1

        final = await api.request("DELETE", "/v1/pods/e2e/hello", params={"uid": created.uid}, model=PodStatus)
        assert final.uid == created.uid
        await watch.until("hello", type_="DELETED")
        assert desk.containers(created.uid) == []
        with pytest.raises(errors.NotFound):
            await api.request("GET", "/v1/pods/e2e/hello")
    finally:
        await api.close()


async def test_follow_streams_a_running_containers_log_through_interlink(desk: Desk, images: str) -> None:
    api = desk.api()
    try:
        script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"
        created = await api.request("POST", "/v1/pods", body=pod("ticker", images, script), model=PodStatus)
        async def running() -> bool:
            status = await api.request("GET", "/v1/pods/e2e/ticker", model=PodStatus)
            return status.phase == "Running"
        await wait_until(running, what="the ticker to run")
        seen = b""
        stream = api.stream("GET", "/v1/pods/e2e/ticker/containers/main/logs", params={"follow": True})
        async for chunk in stream:
            seen += chunk
            if seen.count(b"\n") >= 5:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        lines = seen.decode().splitlines()
        assert lines[:5] == [f"tick {i}" for i in range(5)]
        await api.request("DELETE", "/v1/pods/e2e/ticker", params={"uid": created.uid, "gracePeriodSeconds": 0})
        assert desk.containers(created.uid) == []
    finally:
        await api.close()


async def test_the_sidecars_policy_refusal_reaches_the_caller_and_starts_nothing(desk: Desk, images: str) -> None:
    api = desk.api()
    try:
        evil = pod("evil", images, "id", container={"securityContext": {"privileged": True}})
        with pytest.raises(errors.Forbidden) as refused:
            await api.request("POST", "/v1/pods", body=evil)
        assert "privileged" in str(refused.value)
        assert desk.containers(evil.pod.metadata.uid) == []
    finally:
        await api.close()


async def test_the_request_id_reaches_the_sidecars_log(desk: Desk, images: str) -> None:
    rid = f"e2e-{uuid.uuid4().hex[:10]}"
    body = json.dumps(pod("traced", images, "true").model_dump(mode="json", exclude_none=True))
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sf", "--unix-socket", str(desk.interlink_sock), "-H", f"Authorization: Bearer {desk.token('interlink')}",
        "-H", f"X-Request-Id: {rid}", "-H", "Content-Type: application/json", "--data", body, "http://interlink/v1/pods",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    assert rid in desk.log("interlink")
    await wait_until(lambda: rid in desk.log("sidecar"), what="the request id in the sidecar's log")


async def test_ping_reports_the_engine_as_the_node(desk: Desk) -> None:
    api = desk.api()
    try:
        info = await api.request("GET", "/v1/ping", model=NodeInfo)
        assert [h.name for h in info.sidecars] == ["docker"] and info.sidecars[0].ok
        assert int(info.capacity["cpu"]) >= 1 and info.capacity["pods"]
    finally:
        await api.close()


@pytest.mark.parametrize("victim", ["interlink", "sidecar"])
async def test_kill_9_during_activity_loses_nothing_and_duplicates_nothing(desk: Desk, images: str, victim: str) -> None:
    api = desk.api()
    try:
        uids = {}
        for i in range(4):
            body = pod(f"busy-{i}", images, "sleep 3600")
            uids[body.pod.metadata.name] = body.pod.metadata.uid
            await api.request("POST", "/v1/pods", body=body, model=PodStatus)
        # A create in flight when the process dies: the caller retries it, as vk_bridge does.
        late = pod("late", images, "sleep 3600")
        uids["late"] = late.pod.metadata.uid
        task = asyncio.create_task(api.request("POST", "/v1/pods", body=late, model=PodStatus))
        await asyncio.sleep(0.05)
        assert desk.kill(victim) == -signal.SIGKILL
        try:
            await task
        except errors.KodError:
            pass
        desk.start(victim)
        await ready(desk, victim)
        await api.close()
        api = desk.api()
        await api.request("POST", "/v1/pods", body=late, model=PodStatus)  # the retry: idempotent

        async def all_running() -> list[PodStatus] | None:
            listed = await api.request("GET", "/v1/pods", model=PodStatusList)
            pods = [p for p in listed.items if p.namespace == "e2e"]
            if sorted(p.name for p in pods) == sorted(uids) and all(p.phase == "Running" for p in pods):
                return pods
            return None

        pods = await wait_until(all_running, what="every pod Running after the restart")
        assert {p.name: p.uid for p in pods} == uids
        for name, uid in uids.items():
            mains = [c for c in desk.containers(uid) if c.labels.get("io.kod.role") == "main"]
            assert len(mains) == 1, f"{name}: {[c.name for c in mains]}"
        # The watch of the restarted process knows them all at once.
        sync = await Watch(api).next()
        assert sorted(p.name for p in sync.pods or [] if p.namespace == "e2e") == sorted(uids)
    finally:
        await api.close()
