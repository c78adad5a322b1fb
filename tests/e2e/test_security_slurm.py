"""Attacks on the HPC host through the Slurm sidecar, which runs as root there and reads and writes
each job's directory (docs/slurm.md, "Security"), each through kubectl on the HPC virtual node,
against the real Slurm, each with the legitimate use beside it.

The job's directory belongs to the job's user: whatever that user does (another job of theirs, a
shell on the site, a container that got out), the sidecar must not read, write, chmod, chown or
delete anything outside it. The proof is a canary: a root-only file (0600, in a 0700 directory)
with random contents that no `kubectl logs` may show, and a root directory that must stay as
it was.

- a container's output file swapped for a symlink to the canary while it runs: plain, --tail,
  -f and --previous show nothing of it;
- runAsUser 0, runAsGroup 0 and a system account are refused (Failed, reason Forbidden); a pod
  that names no user runs as nobody and cannot write the host; a subPath an init container
  turned into a symlink to a host directory is refused;
- symlinks planted in the job's directory, then kill -9 of the sidecar: adoption, status and the
  delete's clean-up read and remove nothing outside it;
- volumes are 0600/0700 and the pod's user's; a job directory left with planted symlinks is made
  afresh, never written through.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.slurm_support import hpc_node, jobs_of, wait_for  # noqa: F401 - hpc_node is a fixture
from tests.e2e.test_slurm_pods import site_user, terminated
from tests.fixtures.virtual_node import TERMINAL, VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.timeout(240)]

NOBODY = 65534


@dataclass(frozen=True)
class Canary:
    """A root-only file with a random secret, a root-only file that would read as a container's
    clean exit, and a root directory holding a file: none may be shown, changed or removed."""

    secret: str
    file: Path
    exit_file: Path
    victim: Path


@pytest.fixture
def canary() -> Iterator[Canary]:
    top = Path(tempfile.mkdtemp(prefix="kod-slurm-canary-"))  # 0700, root's
    try:
        value = "KODCANARY-" + secrets.token_hex(12)
        file = top / "secret"
        file.write_text(value + "\n")
        os.chmod(file, 0o600)
        exit_file = top / "exit"
        exit_file.write_text("0 1.0 0\n")
        os.chmod(exit_file, 0o600)
        victim = top / "victim"
        victim.mkdir()
        os.chmod(victim, 0o755)
        (victim / "keep").write_text(value + "\n")
        os.chmod(victim / "keep", 0o600)
        yield Canary(value, file, exit_file, victim)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def assert_untouched(c: Canary) -> None:
    for path, mode in ((c.file, 0o600), (c.exit_file, 0o600), (c.victim, 0o755), (c.victim / "keep", 0o600)):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode), f"{path} was changed"
    assert sorted(os.listdir(c.victim)) == ["keep"], "something was written into the victim directory"
    assert c.file.read_text() == c.secret + "\n"


def job_dir(node: VirtualNode, pod_uid: str) -> Path:
    s = node.stack.settings
    return Path(s.slurm.get("work_dir", f"/var/lib/kod-slurm/{s.sidecar_name}")) / "jobs" / pod_uid


def as_user(uid: int, gid: int, script: str) -> None:
    """Run `script` on the HPC host as the job's user (what another job of theirs could do)."""
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "sh", "-euc", script],
                   check=True, capture_output=True, timeout=30)


def swap_for_symlink(uid: int, gid: int, path: Path, target: Path) -> None:
    """Atomically replace `path` by a symlink to `target`, as the job's user."""
    as_user(uid, gid, f"ln -s '{target}' '{path}.swap' && mv -T '{path}.swap' '{path}'")


def main_state(pod: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return next(cs for cs in pod["status"].get("containerStatuses", []) if cs["name"] == name)


def failed_forbidden(node: VirtualNode, ns: str, name: str) -> dict[str, Any]:
    pod = node.wait_phase(ns, name, *TERMINAL, timeout=60)
    assert (pod["status"]["phase"], pod["status"].get("reason")) == ("Failed", "Forbidden"), pod["status"]
    return pod


# -- 1. output files -------------------------------------------------------------------------

def test_a_log_swapped_for_a_symlink_to_a_root_only_file_is_not_shown(
        hpc_node: VirtualNode, owner_namespace: str, canary: Canary) -> None:
    ns = owner_namespace
    uid, gid = site_user()
    # The first run fails, the second runs on: a previous log and a current one.
    script = "if [ -e /w/second ]; then echo second-run; sleep 20; else touch /w/second; echo first-run; exit 1; fi"
    hpc_node.create(ns, hpc_node.pod(
        "logswap", [{"name": "main", "command": ["sh", "-c", script], "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
        restartPolicy="OnFailure", securityContext={"runAsUser": uid, "runAsGroup": gid},
        volumes=[{"name": "w", "emptyDir": {}}]))
    pod = hpc_node.wait(ns, "logswap", lambda p: bool(p["status"].get("containerStatuses"))
                        and main_state(p)["restartCount"] == 1 and "running" in main_state(p)["state"],
                        timeout=90, what="the second run running")
    wait_for(lambda: hpc_node.logs(ns, "logswap") == "second-run\n", 10, "the second run's output")
    # The legitimate reads, before the swap.
    assert hpc_node.logs(ns, "logswap", "--previous") == "first-run\n"
    assert hpc_node.logs(ns, "logswap", "--tail=1") == "second-run\n"
    assert hpc_node.logs(ns, "logswap", "-f", "--limit-bytes=11") == "second-run\n"

    logs = job_dir(hpc_node, pod["metadata"]["uid"]) / "logs"
    for run in (0, 1):
        swap_for_symlink(uid, gid, logs / f"main.{run}.log", canary.file)
    for args in ((), ("--tail=5",), ("--previous",), ("-f",)):
        out = hpc_node.cluster.kubectl("logs", "logswap", "-n", ns, *args, check=False, timeout=60)
        assert canary.secret not in out.stdout + out.stderr, f"kubectl logs {' '.join(args)} showed a root-only file"
    assert_untouched(canary)


# -- 2. users and the host -------------------------------------------------------------------

@pytest.mark.parametrize("security", [{"runAsUser": 0}, {"runAsGroup": 0}, {"runAsUser": 64030}],
                         ids=["root", "root-group", "slurm-account"])
def test_root_and_system_accounts_are_refused(hpc_node: VirtualNode, owner_namespace: str,
                                              security: dict[str, int]) -> None:
    ns = owner_namespace
    hpc_node.create(ns, hpc_node.pod("asroot", [{"name": "main", "command": ["id", "-u"]}], securityContext=security))
    pod = failed_forbidden(hpc_node, ns, "asroot")
    assert "refused on the HPC node" in pod["status"].get("message", "")
    assert not jobs_of(pod["metadata"]["uid"]), "a job was submitted for a refused pod"


def test_a_pod_without_a_user_runs_as_nobody_and_cannot_write_the_host(
        hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    marker = "kod-slurm-marker-" + secrets.token_hex(6)
    script = (f"id -u; id -g; touch /etc/{marker} 2>/dev/null && echo wrote-etc; touch /{marker} 2>/dev/null && echo wrote-root; "
              f"echo x > /tmp/{marker} && echo tmp-ok; echo x > /w/f && echo emptydir-ok")
    hpc_node.create(ns, hpc_node.pod("nobody", [{"name": "main", "command": ["sh", "-c", script],
                                                 "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
                                     volumes=[{"name": "w", "emptyDir": {}}]))
    pod = hpc_node.wait_phase(ns, "nobody", *TERMINAL, timeout=60)
    out = hpc_node.logs(ns, "nobody")
    assert pod["status"]["phase"] == "Succeeded", out
    assert out.splitlines() == [str(NOBODY), str(NOBODY), "tmp-ok", "emptydir-ok"]
    d = job_dir(hpc_node, pod["metadata"]["uid"])
    assert d.stat().st_uid == NOBODY and (d / "volumes" / "w" / "f").stat().st_uid == NOBODY
    for host in (Path("/etc") / marker, Path("/") / marker, Path("/tmp") / marker):
        assert not host.exists(), f"the container wrote {host} on the host"


@pytest.fixture
def host_dir() -> Iterator[tuple[Path, str]]:
    """A host directory anyone may write, with a file anyone may read: what a subPath escape reaches."""
    top = Path(tempfile.mkdtemp(prefix="kod-slurm-hostdir-"))
    os.chmod(top, 0o777)
    value = "KODHOST-" + secrets.token_hex(12)
    (top / "hostfile").write_text(value + "\n")
    os.chmod(top / "hostfile", 0o644)
    try:
        yield top, value
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_subpath_an_init_container_turned_into_a_symlink_to_the_host_is_refused(
        hpc_node: VirtualNode, owner_namespace: str, host_dir: tuple[Path, str]) -> None:
    ns = owner_namespace
    target, value = host_dir
    w = {"name": "w", "mountPath": "/w"}
    init = f"mkdir -p /w/ok && echo fine > /w/ok/f && rmdir /w/esc && ln -s {target} /w/esc"
    hpc_node.create(ns, hpc_node.pod(
        "subpath", [
            {"name": "good", "command": ["cat", "/ok/f"], "volumeMounts": [{"name": "w", "mountPath": "/ok", "subPath": "ok"}]},
            {"name": "bad", "command": ["sh", "-c", "cat /esc/hostfile; echo pwned > /esc/written"],
             "volumeMounts": [{"name": "w", "mountPath": "/esc", "subPath": "esc"}]}],
        initContainers=[{"name": "plant", "command": ["sh", "-c", init], "volumeMounts": [w]}],
        volumes=[{"name": "w", "emptyDir": {}}]))
    pod = hpc_node.wait_phase(ns, "subpath", *TERMINAL, timeout=60)
    assert hpc_node.logs(ns, "subpath", "-c", "good") == "fine\n"  # a subPath inside its volume works
    bad = hpc_node.logs(ns, "subpath", "-c", "bad")
    assert value not in bad, "the container read a host file through its subPath"
    assert not (target / "written").exists(), "the container wrote into a host directory through its subPath"
    assert "leads out of its volume" in bad
    assert (pod["status"]["phase"], terminated(pod, "bad").get("exitCode")) == ("Failed", 126)


# -- 3. restart, status and clean-up ---------------------------------------------------------

@pytest.mark.timeout(300)
def test_symlinks_planted_in_the_job_directory_survive_a_kill_9_without_reaching_outside(
        hpc_node: VirtualNode, owner_namespace: str, canary: Canary) -> None:
    ns = owner_namespace
    uid, gid = site_user()
    hpc_node.create(ns, hpc_node.pod(
        "planted", [{"name": "main", "command": ["sh", "-c", "echo started; sleep 3600"],
                     "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
        securityContext={"runAsUser": uid, "runAsGroup": gid}, terminationGracePeriodSeconds=1,
        volumes=[{"name": "w", "emptyDir": {}}]))
    pod = hpc_node.wait_phase(ns, "planted", "Running", timeout=90)
    wait_for(lambda: hpc_node.logs(ns, "planted") == "started\n", 10, "the container's output")
    d = job_dir(hpc_node, pod["metadata"]["uid"])
    # The job's user turns its files into symlinks out of the directory, then the sidecar dies.
    swap_for_symlink(uid, gid, d / "state" / "main.0.exit", canary.exit_file)  # "exited 0", were it read
    swap_for_symlink(uid, gid, d / "logs" / "main.0.log", canary.file)
    for link in (d / "escape", d / "logs" / "escape", d / "volumes" / "w" / "escape", d / "state" / "escape.0.start"):
        as_user(uid, gid, f"ln -s '{canary.victim}' '{link}'")
    as_user(uid, gid, f"ln -s '{canary.victim / 'keep'}' '{d / 'state' / 'keep.0.start'}'")
    hpc_node.kill("sidecar")
    hpc_node.restart("sidecar")
    # Adopted, and still what it is: running (the planted "exit 0" is not believed).
    pod = hpc_node.wait(ns, "planted", lambda p: "running" in main_state(p)["state"] and p["status"]["phase"] == "Running",
                        timeout=30, what="the adopted pod running")
    assert main_state(pod)["restartCount"] == 0
    out = hpc_node.cluster.kubectl("logs", "planted", "-n", ns, check=False).stdout
    assert canary.secret not in out
    # The delete's clean-up removes the job's directory and nothing it points to.
    hpc_node.cluster.kubectl("delete", "pod", "planted", "-n", ns, "--wait=true", timeout=60)
    hpc_node.wait_gone(ns, "planted", timeout=30)
    wait_for(lambda: not d.exists(), 10, "the job's directory removed")
    assert_untouched(canary)


# -- 4. volumes ------------------------------------------------------------------------------

def test_volumes_are_private_to_the_pods_user(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    uid, gid = site_user()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sec-cm"}, "data": {"c": "blue"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec-secret"}, "stringData": {"s": "pw"}}
    mounts = [{"name": n, "mountPath": f"/v/{n}"} for n in ("cm", "sec", "proj", "down")]
    script = "find /v -mindepth 1 | sort | while read p; do stat -c '%a %u %F %n' \"$p\"; done"
    hpc_node.create(ns, cm, secret, hpc_node.pod(
        "vols", [{"name": "main", "command": ["sh", "-c", script], "volumeMounts": mounts}],
        securityContext={"runAsUser": uid, "runAsGroup": gid},
        volumes=[{"name": "cm", "configMap": {"name": "sec-cm", "defaultMode": 0o644}},
                 {"name": "sec", "secret": {"secretName": "sec-secret", "items": [{"key": "s", "path": "d/s", "mode": 0o755}]}},
                 {"name": "proj", "projected": {"sources": [{"secret": {"name": "sec-secret"}}, {"configMap": {"name": "sec-cm"}}]}},
                 {"name": "down", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]))
    pod = hpc_node.wait_phase(ns, "vols", *TERMINAL, timeout=60)
    out = hpc_node.logs(ns, "vols")
    assert pod["status"]["phase"] == "Succeeded", out
    seen = {line.split()[-1]: line.split()[:2] for line in out.splitlines()}
    expected_files = {"/v/cm/c": "600", "/v/sec/d/s": "700", "/v/proj/s": "600", "/v/proj/c": "600", "/v/down/name": "600"}
    for path, mode in expected_files.items():
        assert seen.get(path) == [mode, str(uid)], (path, out)
    assert seen.get("/v/sec/d") == ["700", str(uid)], out
    # From the host: everything of the job's directory but the image trees is the user's, 0600/0700.
    d = job_dir(hpc_node, pod["metadata"]["uid"])
    for top, dirs, files in os.walk(d):
        if top == str(d):
            dirs.remove("rootfs")
        for name in (*dirs, *files):
            st = os.lstat(os.path.join(top, name))
            assert st.st_uid == uid, os.path.join(top, name)
            if top.startswith(str(d / "volumes")):
                assert stat.S_IMODE(st.st_mode) in (0o600, 0o700), os.path.join(top, name)


def test_a_job_directory_left_with_planted_symlinks_is_made_afresh(
        hpc_node: VirtualNode, owner_namespace: str, canary: Canary) -> None:
    ns = owner_namespace
    uid, gid = site_user()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fresh-secret"}, "stringData": {"s": "pw"}}
    pod = hpc_node.pod("fresh", [{"name": "main", "command": ["cat", "/sec/s"],
                                  "volumeMounts": [{"name": "sec", "mountPath": "/sec"}]}],
                       securityContext={"runAsUser": uid, "runAsGroup": gid},
                       volumes=[{"name": "sec", "secret": {"secretName": "fresh-secret"}}],
                       schedulingGates=[{"name": "kod.io/test-hold"}])
    hpc_node.create(ns, secret, pod)
    pod_uid = hpc_node.cluster.kubectl_json("get", "pod", "fresh", "-n", ns)["metadata"]["uid"]
    # What an earlier try of this pod left (its user's), with symlinks out of it planted there.
    d = job_dir(hpc_node, pod_uid)
    try:
        (d / "volumes").mkdir(parents=True, mode=0o700)
        for p in (d, d / "volumes"):
            os.chown(p, uid, gid)
        as_user(uid, gid, f"ln -s '{canary.victim}' '{d / 'volumes' / 'sec'}'; ln -s '{canary.victim / 'x'}' '{d / 'job.sh'}'; "
                          f"ln -s '{canary.victim}' '{d / 'state'}'")
        hpc_node.cluster.kubectl("patch", "pod", "fresh", "-n", ns, "--type=json",
                                 "-p", '[{"op": "remove", "path": "/spec/schedulingGates"}]')
        status = hpc_node.wait_phase(ns, "fresh", *TERMINAL, timeout=60)
        assert (status["status"]["phase"], hpc_node.logs(ns, "fresh")) == ("Succeeded", "pw")
        assert not (d / "volumes" / "sec").is_symlink()
        assert_untouched(canary)
    finally:
        if not jobs_of(pod_uid):
            shutil.rmtree(d, ignore_errors=True)  # never submitted: the sidecar does not know it


@pytest.mark.timeout(180)
def test_a_deleted_pods_kill_pass_reaches_only_its_own_job(hpc_node: VirtualNode, owner_namespace: str) -> None:
    """The job script's SIGTERM and SIGKILL passes (sidecars/slurm/jobscript.py) walk every
    process of the machine and signal those of the job's own cgroup: a sibling pod of the same
    user, and a process of that user outside Slurm, live through the delete of a pod whose
    container ignores SIGTERM (so both passes run)."""
    ns = owner_namespace
    uid, gid = site_user()
    outside = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "sleep", "300"])
    try:
        as_user = {"securityContext": {"runAsUser": uid, "runAsGroup": gid}, "terminationGracePeriodSeconds": 2}
        hpc_node.create(ns, hpc_node.pod("kill-victim", [{"name": "main", "command": [
            "sh", "-c", "trap '' TERM; while :; do sleep 1; done"]}], **as_user))
        hpc_node.create(ns, hpc_node.pod("bystander", [{"name": "main", "command": [
            "sh", "-c", "while :; do echo alive; sleep 1; done"]}], **as_user))
        victim = hpc_node.wait_phase(ns, "kill-victim", "Running", timeout=90)
        bystander = hpc_node.wait_phase(ns, "bystander", "Running", timeout=90)
        hpc_node.cluster.kubectl("delete", "pod", "kill-victim", "-n", ns, "--wait=false")
        wait_for(lambda: not jobs_of(victim["metadata"]["uid"], active_only=True), 30, "the victim's job gone")
        lines = hpc_node.logs(ns, "bystander").count("alive")
        time.sleep(3)
        assert outside.poll() is None, "the kill pass reached a process of the same user outside the job"
        assert jobs_of(bystander["metadata"]["uid"], active_only=True), "the kill pass ended the sibling pod's job"
        assert hpc_node.wait_phase(ns, "bystander", "Running", timeout=5)["status"]["phase"] == "Running"
        assert hpc_node.logs(ns, "bystander").count("alive") > lines, "the sibling pod's container stopped"
    finally:
        outside.kill()
        outside.wait(timeout=10)
