"""interlink in front of BOTH real sidecars at once, as processes without the cluster: a pod whose
runtimeClassName is `slurm` becomes a Slurm job, every other pod runs in Docker; status, logs and
deletes come back through the same API from either (no special case in interlink).

The test runs its own kod-docker-sidecar and kod-slurm-sidecar (names of their own: Docker labels,
job comments) and its own kod-interlink, on unix sockets in its temporary directory, and removes
whatever they made (and stops Slurm again when it started it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kod import errors
from kod.http import ApiClient
from kod.tokens import create_token_file
from kod.wire import PodCreateRequest, PodStatus, PodStatusList
from localenv import slurm
from localenv import settings as localenv_settings
from sidecars.slurm import jobscript, jobstate
from tests.e2e.test_interlink_sidecar import images, wait_until  # noqa: F401 - images is a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

BIN = Path(sys.executable).parent


class Pair:
    def __init__(self, root: Path, docker: Any) -> None:
        self.root = root
        self.docker = docker
        self.name = f"rt-{uuid.uuid4().hex[:6]}"
        # Jobs run as nobody, not root (docs/slurm.md, Security): their directories must be
        # reachable by other users, which pytest's 0700 tmp_path is not.
        self.work_dir = Path("/var/lib/kod-slurm") / self.name
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def sock(self, which: str) -> Path:
        return self.root / f"{which}.sock"

    def token_file(self, which: str) -> Path:
        return self.root / f"{which}.token"

    def start(self, which: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KOD_INTERLINK_", "KOD_SIDECAR_", "KOD_SLURM_"))}
        env["XDG_CONFIG_HOME"] = str(self.root / "config")
        tok = ["--token-file", str(self.token_file(which))]
        if which == "docker":
            argv = [str(BIN / "kod-docker-sidecar"), "--socket", str(self.sock(which)), "--name", self.name, *tok]
        elif which == "slurm":
            argv = [str(BIN / "kod-slurm-sidecar"), "--socket", str(self.sock(which)), "--name", self.name,
                    "--work-dir", str(self.work_dir), *tok]
        else:
            env["KOD_INTERLINK_SIDECARS"] = json.dumps([
                {"name": "slurm", "url": f"unix://{self.sock('slurm')}", "token_file": str(self.token_file("slurm")),
                 "match": {"runtime_class": "slurm"}},
                {"name": "docker", "url": f"unix://{self.sock('docker')}", "token_file": str(self.token_file("docker"))},
            ])
            env["KOD_INTERLINK_TOKEN_FILE"] = str(self.token_file(which))
            argv = [str(BIN / "kod-interlink"), "--socket", str(self.sock(which))]
        out = open(self.root / f"{which}.log", "ab")
        self.procs[which] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def api(self, which: str = "interlink") -> ApiClient:
        return ApiClient(f"unix://{self.sock(which)}", self.token_file(which).read_text().strip())

    def slurm_jobs(self) -> list[jobstate.JobInfo]:
        out = subprocess.run(jobstate.SQUEUE_ARGS, capture_output=True, text=True, timeout=30, check=True).stdout
        return [j for j in jobstate.parse_jobs(out).values() if jobscript.parse_comment(self.name, j.comment)]

    def cleanup(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(timeout=30)
        for job in self.slurm_jobs():
            if job.active:
                subprocess.run(["scancel", job.job_id], capture_output=True, timeout=30)
        for c in self.docker.containers.list(all=True, ignore_removed=True, filters={"label": f"io.kod.sidecar={self.name}"}):
            c.remove(force=True)
        for n in self.docker.networks.list(filters={"label": f"io.kod.sidecar={self.name}"}):
            n.remove()
        for v in self.docker.volumes.list(filters={"label": f"io.kod.sidecar={self.name}"}):
            v.remove(force=True)
        shutil.rmtree(self.work_dir, ignore_errors=True)


async def answers(api: ApiClient) -> bool:
    try:
        await api.request("GET", "/v1/ping", timeout=5)
        return True
    except (errors.KodError, OSError):
        return False


@pytest.fixture
async def pair(tmp_path: Path, images: str, docker_engine: Any) -> AsyncIterator[Pair]:  # noqa: F811
    s = localenv_settings.load()
    started_slurm = not all(slurm.status(s)["daemons"].values())
    slurm.up(s)
    p = Pair(tmp_path, docker_engine)
    try:
        for which in ("docker", "slurm", "interlink"):
            create_token_file(p.token_file(which))
            p.start(which)
            api = p.api(which)
            try:
                await wait_until(lambda: answers(api), timeout=60, what=f"{which} to answer")
            finally:
                await api.close()
        yield p
    finally:
        p.cleanup()
        if started_slurm:  # what this test started it stops (no daemon is left behind)
            slurm.down(s)


def pod(name: str, image: str, script: str, **spec: Any) -> PodCreateRequest:
    return PodCreateRequest.model_validate({
        "pod": {"metadata": {"name": name, "namespace": "e2e", "uid": str(uuid.uuid4())},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script]}], **spec}},
        "containers": [{"name": "main", "env": [], "command": ["sh", "-c", script]}],
    })


async def test_interlink_routes_by_runtime_class_to_the_slurm_and_the_docker_sidecar(pair: Pair, images: str) -> None:  # noqa: F811
    api = pair.api()
    try:
        hpc = pod("on-slurm", images, "echo from slurm", runtimeClassName="slurm")
        desk = pod("on-docker", images, "echo from docker")
        _, created_hpc = await api.call("POST", "/v1/pods", PodStatus, body=hpc)
        _, created_desk = await api.call("POST", "/v1/pods", PodStatus, body=desk)
        assert created_hpc.sidecar == "slurm" and created_desk.sidecar == "docker"

        async def done(name: str) -> PodStatus | None:
            _, s = await api.call("GET", f"/v1/pods/e2e/{name}", PodStatus)
            return s if s.phase in ("Succeeded", "Failed") else None

        s_hpc = await wait_until(lambda: done("on-slurm"), timeout=60, what="the Slurm pod to finish")
        s_desk = await wait_until(lambda: done("on-docker"), timeout=60, what="the Docker pod to finish")
        assert (s_hpc.phase, s_hpc.sidecar, s_desk.phase, s_desk.sidecar) == ("Succeeded", "slurm", "Succeeded", "docker")
        assert s_hpc.containerStatuses[0].containerID.startswith("slurm://")
        # The Slurm pod is a job of the test's sidecar; the Docker pod is a container of its own.
        assert [jobscript.parse_comment(pair.name, j.comment) for j in pair.slurm_jobs()] == [hpc.pod.metadata.uid]
        assert pair.docker.containers.list(all=True, filters={"label": f"io.kod.pod.uid={desk.pod.metadata.uid}"})
        assert not pair.docker.containers.list(all=True, filters={"label": f"io.kod.pod.uid={hpc.pod.metadata.uid}"})
        for name, text in (("on-slurm", "from slurm\n"), ("on-docker", "from docker\n")):
            log = b"".join([c async for c in api.stream("GET", f"/v1/pods/e2e/{name}/containers/main/logs")])
            assert log.decode() == text
        for name in ("on-slurm", "on-docker"):
            await api.request("DELETE", f"/v1/pods/e2e/{name}", timeout=60)

        async def empty() -> bool:  # interlink's listing follows the sidecars' DELETED events
            return not (await api.request("GET", "/v1/pods", model=PodStatusList)).items

        await wait_until(empty, timeout=10, what="interlink to list no pod")
        assert not [j for j in pair.slurm_jobs() if j.active]
    finally:
        await api.close()
