"""The root sidecar reads a job's files (state/, logs/) only as they are: a regular file of the
job's user, never through a symlink, a FIFO or a hard link to someone else's file (jobfiles);
and stages a job's directory so that nothing planted in it is written through (staging)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from kod import wire
from sidecars.slurm import jobfiles, jobscript, jobstate, staging
from sidecars.slurm.jobscript import ImageConfig

#: The job's user in these tests (files are chowned to it; the tests run as root, as the sidecar).
USER = 4242

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root, as the sidecar has")


def job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "jobs" / "u-1"
    for sub in ("state", "logs"):
        (d / sub).mkdir(parents=True)
    for p in (d, d / "state", d / "logs"):
        os.chown(p, USER, USER)
    return d


def user_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, USER, USER)
    return path


def secret(tmp_path: Path) -> Path:
    s = tmp_path / "root-only"
    s.write_text("TOPSECRET\n")
    os.chmod(s, 0o600)
    return s


def test_the_jobs_own_files_are_read(tmp_path: Path) -> None:
    d = job_dir(tmp_path)
    user_file(d / "state" / "main.0.start", "100.5\n")
    user_file(d / "state" / "main.0.exit", "0 101.0 0\n")
    runs = jobstate.read_runs(d)["main"]
    assert [r.exit_code for r in runs] == [0]


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo", "dir-symlink", "root-owned"])
def test_what_the_jobs_user_planted_is_not_read(tmp_path: Path, plant: str) -> None:
    d = job_dir(tmp_path)
    target = secret(tmp_path)
    log = d / "logs" / "main.0.log"
    if plant == "symlink":
        log.symlink_to(target)
    elif plant == "hardlink":
        os.link(target, log)  # what protected_hardlinks stops a user from doing; root-owned anyway
    elif plant == "fifo":
        os.mkfifo(log)  # opening it must not block the sidecar
    elif plant == "dir-symlink":
        (d / "logs").rmdir()
        (tmp_path / "elsewhere").mkdir()
        os.link(target, tmp_path / "elsewhere" / "main.0.log")
        (d / "logs").symlink_to(tmp_path / "elsewhere")
    else:
        log.write_text("TOPSECRET\n")  # a file the job's user does not own
    with jobfiles.JobFiles.open(d) as jf:  # type: ignore[union-attr]
        assert jf.open_file("logs", "main.0.log") is None
        assert jf.read_small("logs", "main.0.log") is None


def test_a_state_file_swapped_for_a_symlink_is_ignored(tmp_path: Path) -> None:
    d = job_dir(tmp_path)
    user_file(d / "state" / "main.0.start", "100.5\n")
    root_only = secret(tmp_path)
    root_only.write_text("7 101.0 0\n")  # would parse as an exit code, were it read
    (d / "state" / "main.0.exit").symlink_to(root_only)
    runs = jobstate.read_runs(d)["main"]
    assert runs[0].exit_code is None  # as if the run had not ended: nothing read through the link


def test_a_job_directory_that_is_a_symlink_is_not_opened(tmp_path: Path) -> None:
    real = job_dir(tmp_path)
    link = tmp_path / "jobs" / "u-2"
    link.symlink_to(real)
    assert jobfiles.JobFiles.open(link) is None and jobstate.read_runs(link) == {}


def test_tail_reads_the_last_lines_from_the_end(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_bytes(b"".join(b"line %d\n" % i for i in range(10000)))
    fd = os.open(p, os.O_RDONLY)
    try:
        assert jobfiles.tail(fd, 2, block=64) == (b"line 9998\nline 9999\n", p.stat().st_size)
        assert jobfiles.tail(fd, 0) == (b"", p.stat().st_size)
        assert jobfiles.tail(fd, 20000)[0] == p.read_bytes()
    finally:
        os.close(fd)


# -- staging ---------------------------------------------------------------------------------

def _request(uid: str = "u-1") -> wire.PodCreateRequest:
    return wire.PodCreateRequest.model_validate({
        "pod": {"metadata": {"name": "p", "namespace": "ns", "uid": uid},
                "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": USER},
                         "volumes": [{"name": "sec", "secret": {"secretName": "s"}}, {"name": "w", "emptyDir": {}}],
                         "containers": [{"name": "main", "image": "img", "command": ["true"],
                                         "volumeMounts": [{"name": "sec", "mountPath": "/sec"},
                                                          {"name": "w", "mountPath": "/w"}]}]}},
        "volumes": [{"name": "sec", "files": [{"path": "password", "data": base64.b64encode(b"pw").decode()}]}]})


def _stage(tmp_path: Path, job: Path) -> None:
    rootfs = tmp_path / "image"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "sh").write_text("#!")
    images = {"img": ImageConfig(rootfs=rootfs)}
    req = _request()
    plan = jobscript.plan_job(req, images, job_dir=job, sidecar="slurm", partition="kod", default_memory="64Mi",
                              resolve=lambda image, t: staging.resolve_in_tree(image.rootfs, t))
    staging.stage(job, req, plan, images)


def test_volumes_are_the_pods_users_and_private(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "u-1"
    _stage(tmp_path, job)
    pw = job / "volumes" / "sec" / "password"
    assert pw.read_text() == "pw"
    assert (pw.stat().st_uid, pw.stat().st_mode & 0o777) == (USER, 0o600)
    for d in (job, job / "volumes" / "sec", job / "volumes" / "w", job / "logs"):
        assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (USER, 0o700), d
    # the image tree is hard links shared with every pod of the image: never given away
    assert (job / "rootfs" / "img" / "bin" / "sh").stat().st_uid == 0
    assert (tmp_path / "image" / "bin" / "sh").stat().st_uid == 0


def test_a_job_directory_with_planted_symlinks_is_made_afresh_not_written_through(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "u-1"
    (job / "volumes").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    (job / "volumes" / "sec").symlink_to(victim)        # a volume's root pointing at a root directory
    (job / "volumes" / "w").symlink_to(victim)
    (job / "job.sh").symlink_to(victim / "file")
    os.chown(job, USER, USER)
    _stage(tmp_path, job)
    assert os.listdir(victim) == []
    assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o755)
    assert not (job / "volumes" / "sec").is_symlink() and (job / "volumes" / "sec" / "password").read_text() == "pw"


def test_remove_never_follows_a_symlink_out_of_the_job_directory(tmp_path: Path) -> None:
    job = job_dir(tmp_path)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_text("x")
    (job / "logs" / "escape").symlink_to(keep)
    (job / "state" / "file").symlink_to(keep / "file")
    staging.remove(job)
    assert not job.exists() and (keep / "file").read_text() == "x"
