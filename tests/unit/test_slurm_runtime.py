"""The Slurm sidecar's runtime without Slurm: how one squeue listing updates a pod, and versions."""

from __future__ import annotations

import time
from pathlib import Path

from kod import wire
from kod.hub import Hub
from sidecars.slurm import runtime as rt
from sidecars.slurm.jobstate import JobInfo
from sidecars.slurm.records import Record
from sidecars.slurm.settings import SlurmSidecarSettings


def entry(tmp_path: Path, *, submitted: float) -> rt.Entry:
    req = wire.PodCreateRequest.model_validate({
        "pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "i"}]}}})
    e = rt.Entry(record=Record(request=req, job_id="7"), job_dir=tmp_path / "u", submitted=submitted)
    return e


def runtime(tmp_path: Path) -> rt.Runtime:
    return rt.Runtime(SlurmSidecarSettings(work_dir=tmp_path, token_file=tmp_path / "t"), Hub(16))


def test_a_job_squeue_does_not_list_yet_right_after_sbatch_stays_pending(tmp_path: Path) -> None:
    r, e = runtime(tmp_path), entry(tmp_path, submitted=time.monotonic())
    r._update(e, {}, time.monotonic() - 0.5)  # a listing that started before sbatch answered
    assert not e.lost and e.status is not None and e.status.phase == "Pending"


def test_a_job_never_listed_long_after_sbatch_is_lost(tmp_path: Path) -> None:
    r, e = runtime(tmp_path), entry(tmp_path, submitted=time.monotonic() - rt.LOST_AFTER_SECONDS - 1)
    r._update(e, {}, time.monotonic())
    assert e.lost and e.status is not None and e.status.phase == "Failed"


def test_a_job_that_leaves_the_listing_while_running_is_lost(tmp_path: Path) -> None:
    r, e = runtime(tmp_path), entry(tmp_path, submitted=time.monotonic())
    r._update(e, {"7": JobInfo("7", "RUNNING", "None", None, None, "n", "kod:slurm:u")}, time.monotonic())
    assert not e.lost
    r._update(e, {}, time.monotonic())
    assert e.lost


def test_versions_increase_across_restarts() -> None:
    first = rt.next_version(0)
    assert rt.next_version(first) > first
    assert rt.next_version(0) >= first  # a new process starts above what the old one published


def test_the_slurm_sidecar_serves_the_documented_sidecar_api(tmp_path: Path) -> None:
    import json

    from pydantic import SecretStr

    from interlink import openapi
    from kod import routes
    from sidecars.slurm.app import create_app
    from tests.unit.test_openapi import route_drift

    spec = json.loads(openapi.SPEC_PATH.read_text())
    app = create_app(SlurmSidecarSettings(token=SecretStr("t"), work_dir=tmp_path, token_file=tmp_path / "t"))
    optional = {op.path for op in routes.operations(routes.SIDECAR) if routes.SIDECAR in op.optional_for}
    drift = [d for d in route_drift(app, routes.SIDECAR, spec) if not any(f" {p}:" in d for p in optional)]
    assert drift == []
