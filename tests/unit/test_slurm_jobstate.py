"""The Slurm sidecar's pure part: squeue/sacct lines and the job's files -> pod status (sidecars/slurm/jobstate.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kod import wire
from sidecars.slurm import jobstate
from sidecars.slurm.jobstate import JobInfo, Run

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def pod(**spec: object) -> wire.Pod:
    return wire.Pod.model_validate({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                                    "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "i"}], **spec}})


def job(state: str, reason: str = "None") -> JobInfo:
    return JobInfo("42", state, reason, T0, None, "kod-ns-p", "kod:slurm:u")


def test_squeue_lines_parse_to_jobs() -> None:
    out = ("42|RUNNING|None|2026-12-02T10:00:00|2026-12-02T11:00:00|kod-ns-p|kod:slurm:u\n"
           "43|PENDING|Resources|N/A|N/A|kod-ns-q|kod:slurm:v\n"
           "44|CANCELLED by 0|None|2026-12-02T10:00:00|2026-12-02T10:01:00|x|(null)\n"
           "garbage\n42.batch|RUNNING|None|x|x|batch|\n")
    jobs = jobstate.parse_squeue(out)
    assert sorted(jobs) == ["42", "43", "44"]
    assert jobs["42"].running and jobs["42"].comment == "kod:slurm:u" and jobs["42"].start is not None
    assert jobs["43"].active and not jobs["43"].running and jobs["43"].start is None
    assert jobs["44"].state == "CANCELLED" and not jobs["44"].active


def test_sacct_lines_parse_the_same_way() -> None:
    out = "42|OUT_OF_MEMORY|None|2026-12-02T10:00:00|2026-12-02T10:00:05|kod-ns-p|kod:slurm:u\n42.batch|OUT_OF_MEMORY|||||\n"
    assert jobstate.parse_jobs(out)["42"].state == "OUT_OF_MEMORY"


def test_the_scripts_files_parse_to_runs() -> None:
    runs = jobstate.parse_runs({"main.0.start": "1764669600.5\n", "main.0.exit": "1 1764669601.0 0\n",
                                "main.1.start": "1764669611.0", "init.0.start": "1764669599", "init.0.exit": "137 1764669600 1",
                                "junk": "x", "main.x.start": "1"})
    assert [r.exit_code for r in runs["main"]] == [1, None]
    assert runs["init"][0].oom and runs["init"][0].exit_code == 137


def test_a_pending_job_is_a_pending_pod_with_slurms_reason() -> None:
    s = jobstate.compute(pod(), job("PENDING", "Resources"), {})
    assert s.phase == "Pending" and "pending (Resources)" in (s.message or "")
    assert s.containerStatuses[0].state.waiting and s.containerStatuses[0].state.waiting.reason == "ContainerCreating"


def test_a_running_container_makes_the_pod_running() -> None:
    s = jobstate.compute(pod(), job("RUNNING"), {"main": [Run(T0)]})
    assert s.phase == "Running" and s.containerStatuses[0].ready and s.containerStatuses[0].state.running
    assert s.startTime == T0


def test_init_containers_keep_the_pod_pending_until_they_succeed() -> None:
    p = pod(initContainers=[{"name": "init", "image": "i"}])
    s = jobstate.compute(p, job("RUNNING"), {"init": [Run(T0)]})
    assert s.phase == "Pending" and s.containerStatuses[0].state.waiting.reason == "PodInitializing"
    s = jobstate.compute(p, job("RUNNING"), {"init": [Run(T0, 0, T0)], "main": [Run(T0)]})
    assert s.phase == "Running"
    s = jobstate.compute(p, job("FAILED", "NonZeroExitCode"), {"init": [Run(T0, 3, T0)]})
    assert s.phase == "Failed" and s.initContainerStatuses[0].state.terminated.exitCode == 3


@pytest.mark.parametrize(("state", "runs", "phase", "reason", "exit_code", "container_reason"), [
    ("COMPLETED", [Run(T0, 0, T0)], "Succeeded", None, 0, "Completed"),
    ("FAILED", [Run(T0, 3, T0)], "Failed", None, 3, "Error"),
    ("OUT_OF_MEMORY", [Run(T0, 137, T0, oom=True)], "Failed", None, 137, "OOMKilled"),
    ("OUT_OF_MEMORY", [Run(T0)], "Failed", None, 137, "OOMKilled"),  # the shell went with it: no exit file
    ("TIMEOUT", [Run(T0)], "Failed", "DeadlineExceeded", 137, "Error"),
    ("NODE_FAIL", [Run(T0)], "Failed", "NodeLost", 137, "Error"),
    ("PREEMPTED", [Run(T0)], "Failed", "Preempting", 137, "Error"),
])
def test_slurms_outcomes_map_to_the_kubelets_reasons(state: str, runs: list[Run], phase: str, reason: str | None,
                                                      exit_code: int, container_reason: str) -> None:
    s = jobstate.compute(pod(), job(state), {"main": runs})
    term = s.containerStatuses[0].state.terminated
    assert (s.phase, s.reason, term.exitCode, term.reason) == (phase, reason, exit_code, container_reason)


def test_the_sidecars_own_deadline_fails_the_pod_as_deadline_exceeded() -> None:
    s = jobstate.compute(pod(activeDeadlineSeconds=5), job("RUNNING"), {"main": [Run(T0)]}, deadline_exceeded=True)
    assert (s.phase, s.reason) == ("Failed", "DeadlineExceeded") and s.message == jobstate.DEADLINE_MESSAGE


def test_restarts_count_and_the_previous_run_is_last_state() -> None:
    p = pod(restartPolicy="OnFailure")
    s = jobstate.compute(p, job("RUNNING"), {"main": [Run(T0, 1, T0), Run(T0, 1, T0), Run(T0)]})
    cs = s.containerStatuses[0]
    assert cs.restartCount == 2 and cs.lastState.terminated.exitCode == 1 and cs.state.running


def test_a_job_slurm_no_longer_lists_ends_the_pod_from_its_files() -> None:
    s = jobstate.compute(pod(), None, {"main": [Run(T0, 0, T0)]}, lost=True)
    assert s.phase == "Succeeded"
    s = jobstate.compute(pod(), None, {"main": [Run(T0)]}, lost=True)
    assert s.phase == "Failed" and "no longer lists" in (s.message or "")


def test_read_runs_reads_the_state_directory(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "main.0.start").write_text("1764669600\n")
    (tmp_path / "state" / "main.0.exit").write_text("0 1764669601 0\n")
    assert jobstate.read_runs(tmp_path)["main"][0].exit_code == 0
    assert jobstate.read_runs(tmp_path / "missing") == {}
