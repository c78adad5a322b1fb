"""Support for the Slurm sidecar's end-to-end tests (tests/e2e/test_slurm_*.py): the virtual HPC
node `hpc-local` on this machine's real Slurm (localenv.slurm), and what Slurm says of its jobs.

- `hpc_node` (session): Slurm and the HPC node's stack up (`localenv.slurm.hpc_up`, idempotent),
  as a `VirtualNode`. What the fixture started it stops again at the end (pods deleted, jobs
  cancelled, daemons stopped); what already ran is left running. Any job of the node's sidecar
  still queued at the end is cancelled, so no test leaves a job behind, even when it failed.
- `jobs(node)`: the node sidecar's jobs as squeue lists them (one call).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from localenv import desktop_stack, slurm
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from localenv.settings import LocalEnvSettings
from sidecars.slurm import jobscript, jobstate
from tests.fixtures.virtual_node import VirtualNode

SIDECAR = "slurm"


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str
    pod_uid: str


def jobs(*, active_only: bool = True) -> list[Job]:
    """The HPC sidecar's jobs (by their comment), active ones unless told otherwise."""
    out = subprocess.run(jobstate.SQUEUE_ARGS, capture_output=True, text=True, timeout=30, check=True).stdout
    found = []
    for job in jobstate.parse_jobs(out).values():
        uid = jobscript.parse_comment(SIDECAR, job.comment)
        if uid and (job.active or not active_only):
            found.append(Job(job.job_id, job.state, uid))
    return found


def jobs_of(uid: str, *, active_only: bool = False) -> list[Job]:
    return [j for j in jobs(active_only=active_only) if j.pod_uid == uid]


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s (last: {value!r})")


def _running(s: LocalEnvSettings) -> bool:
    stack = desktop_stack.stack_for(settings=slurm.hpc_stack_settings())
    return all(slurm.status(s)["daemons"].values()) and all(desktop_stack.pid(n, stack) for n in desktop_stack.NAMES)


@pytest.fixture(scope="session")
def hpc_node(cluster: ClusterHandle, docker_engine: Any, testbox_image: str,
             localenv_config: LocalEnvSettings) -> Iterator[VirtualNode]:
    """The virtual HPC node whose pods run as Slurm jobs."""
    was_running = _running(localenv_config)
    stack = slurm.hpc_up(localenv_config, Progress(quiet=True))
    try:
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        if not was_running:
            slurm.hpc_down(localenv_config, Progress(quiet=True))
        else:
            for job in jobs():
                subprocess.run(["scancel", job.job_id], capture_output=True, timeout=30)
