"""The Slurm sidecar's pure part: a pod -> its sbatch options and its script (sidecars/slurm/jobscript.py)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kod import errors, wire
from sidecars.slurm import jobscript
from sidecars.slurm.jobscript import ImageConfig

JOB_DIR = Path("/var/lib/kod-slurm/jobs/u-1")
IMAGES = {"kod/testbox:0.1.0": ImageConfig(rootfs=Path("/img/rootfs"), env=("PATH=/bin", "LANG=C"), cmd=("sh",))}


def request(spec: dict[str, Any] | None = None, containers: list[dict[str, Any]] | None = None,
            volumes: list[dict[str, Any]] | None = None, **meta: Any) -> wire.PodCreateRequest:
    pod_spec = {"restartPolicy": "Never", "containers": [{"name": "main", "image": "kod/testbox:0.1.0"}], **(spec or {})}
    return wire.PodCreateRequest.model_validate({
        "pod": {"metadata": {"name": "web", "namespace": "team", "uid": "u-1", **meta}, "spec": pod_spec},
        "containers": containers or [], "volumes": volumes or []})


def plan(req: wire.PodCreateRequest, **kw: Any) -> jobscript.JobPlan:
    args = {"job_dir": JOB_DIR, "sidecar": "slurm", "partition": "kod", "default_memory": "256Mi"}
    args.update(kw)
    return jobscript.plan_job(req, IMAGES, **args)


def option(p: jobscript.JobPlan, name: str) -> str | None:
    for o in p.options:
        if o.startswith(f"--{name}="):
            return o.split("=", 1)[1]
    return None


def test_a_pod_is_named_and_marked_by_its_uid() -> None:
    p = plan(request())
    assert option(p, "job-name") == "kod-team-web"
    assert option(p, "comment") == "kod:slurm:u-1"
    assert jobscript.parse_comment("slurm", "kod:slurm:u-1") == "u-1"
    assert jobscript.parse_comment("slurm", "kod:other:u-1") is None
    assert option(p, "export") == "NONE"
    assert "--no-requeue" in p.options


@pytest.mark.parametrize(("containers", "inits", "mem", "cpus"), [
    ([{}], [], "256M", "1"),  # no figures: the default memory, one CPU
    ([{"limits": {"memory": "1Gi", "cpu": "1500m"}}], [], "1024M", "2"),
    ([{"requests": {"memory": "100Mi", "cpu": "250m"}}, {"requests": {"memory": "200Mi", "cpu": "250m"}}], [], "300M", "1"),
    ([{"limits": {"memory": "128Mi"}}], [{"limits": {"memory": "2Gi", "cpu": "3"}}], "2048M", "3"),  # init is larger
    ([{"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}], [], "512M", "1"),  # the limit counts
])
def test_requests_and_limits_map_to_mem_and_cpus_per_task(containers: list[dict[str, Any]], inits: list[dict[str, Any]],
                                                           mem: str, cpus: str) -> None:
    spec = {"containers": [{"name": f"c{i}", "image": "kod/testbox:0.1.0", "resources": r} for i, r in enumerate(containers)],
            "initContainers": [{"name": f"i{i}", "image": "kod/testbox:0.1.0", "resources": r} for i, r in enumerate(inits)]}
    p = plan(request(spec))
    assert (option(p, "mem"), option(p, "cpus-per-task")) == (mem, cpus)


def test_gpus_map_to_gres_deadline_to_time_and_grace_to_signal() -> None:
    spec = {"activeDeadlineSeconds": 90, "terminationGracePeriodSeconds": 7,
            "containers": [{"name": "main", "image": "kod/testbox:0.1.0", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}
    p = plan(request(spec))
    assert option(p, "gres") == "gpu:2"
    assert option(p, "time") == "3"  # whole minutes, one more than the deadline (the sidecar enforces it exactly)
    assert option(p, "signal") == "B:TERM@7"
    assert option(plan(request()), "time") is None and option(plan(request()), "gres") is None


def test_the_pods_user_owns_the_job_and_its_containers() -> None:
    p = plan(request({"securityContext": {"runAsUser": 1000, "runAsGroup": 2000}}))
    assert (option(p, "uid"), option(p, "gid"), p.uid, p.gid) == ("1000", "2000", 1000, 2000)
    assert "--unshare-user --uid 1000 --gid 2000" in p.script
    nobody = plan(request())  # a pod that names no user runs as nobody, never as root
    assert (option(nobody, "uid"), option(nobody, "gid")) == ("65534", "65534")
    assert "--unshare-user --uid 65534 --gid 65534" in nobody.script


@pytest.mark.parametrize("security", [
    {"runAsUser": 0}, {"runAsUser": 1000, "runAsGroup": 0}, {"runAsUser": 106},  # root, root's group, a daemon
    {"runAsGroup": 0}, {"runAsUser": 64030},  # Debian's slurm account
])
def test_root_and_system_accounts_are_refused(security: dict[str, int]) -> None:
    with pytest.raises(errors.Forbidden, match="refused on the HPC node"):
        plan(request({"securityContext": security}))
    with pytest.raises(errors.Forbidden):  # in a container's securityContext too
        plan(request({"containers": [{"name": "main", "image": "kod/testbox:0.1.0", "securityContext": security}]}))


def test_a_site_may_choose_a_default_user_below_the_floor() -> None:
    p = plan(request(), default_uid=500, default_gid=500)
    assert (p.uid, p.gid) == (500, 500)
    with pytest.raises(errors.Forbidden):
        plan(request({"securityContext": {"runAsUser": 501}}), default_uid=500)


def test_containers_asking_for_different_users_are_refused() -> None:
    spec = {"containers": [{"name": "a", "image": "kod/testbox:0.1.0", "securityContext": {"runAsUser": 1001}},
                           {"name": "b", "image": "kod/testbox:0.1.0", "securityContext": {"runAsUser": 1002}}]}
    with pytest.raises(errors.InvalidInput, match="different users"):
        plan(request(spec))


@pytest.mark.parametrize("spec", [
    {"hostPID": True},
    {"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]},
    {"volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "x"}}]},
    {"containers": [{"name": "main", "image": "kod/testbox:0.1.0", "securityContext": {"privileged": True}}]},
])
def test_what_an_hpc_node_does_not_offer_is_forbidden(spec: dict[str, Any]) -> None:
    with pytest.raises(errors.Forbidden):
        plan(request(spec))


def test_init_containers_run_in_order_before_the_main_ones() -> None:
    spec = {"initContainers": [{"name": "first", "image": "kod/testbox:0.1.0", "command": ["true"]},
                               {"name": "second", "image": "kod/testbox:0.1.0", "command": ["true"]}],
            "containers": [{"name": "main", "image": "kod/testbox:0.1.0", "command": ["true"]}]}
    script = plan(request(spec)).script
    first, second, main = (script.index(f"run_c {n} ") for n in ("first", "second", "main"))
    assert first < second < main
    assert "run_c first Never" in script and "|| exit $?" in script.splitlines()[[i for i, l in enumerate(script.splitlines()) if l.startswith("run_c first")][0]]
    assert "run_c main Never" in script
    assert "run_c first OnFailure" in plan(request({**spec, "restartPolicy": "OnFailure"})).script


def _argv_of(script: str, name: str) -> list[str]:
    line = next(l for l in script.splitlines() if l.startswith(f"run_c {name} "))
    words = shlex.split(line.rstrip("&").split("||")[0])
    return words[3:]  # after run_c NAME POLICY


def test_command_args_env_and_volumes_reach_the_sandbox() -> None:
    req = request(
        {"volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "tmp", "emptyDir": {}}],
         "containers": [{"name": "main", "image": "kod/testbox:0.1.0", "args": ["-c", "echo $A"], "workingDir": "/w",
                         "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "tmp", "mountPath": "/scratch"},
                                          {"name": "cfg", "mountPath": "/etc/one", "subPath": "key"}]}]},
        containers=[{"name": "main", "env": [{"name": "A", "value": "b c"}]}])
    argv = _argv_of(plan(req).script, "main")
    # the subPath is opened (and checked) by the script, and bound by descriptor
    assert argv[:5] == ["open_subpaths", "20", str(JOB_DIR / "volumes" / "cfg"), str(JOB_DIR / "volumes" / "cfg" / "key"), "--"]
    argv = argv[5:]
    assert argv[:5] == ["bwrap", "--ro-bind", str(JOB_DIR / "rootfs" / "kod_testbox_0.1.0"), "/", "--dev"]
    assert argv[-3:] == ["--", "-c", "echo $A"]  # args replace CMD ("sh"); the ENTRYPOINT (none) stays
    joined = " ".join(argv)
    assert "--setenv A b c" in joined and "--setenv LANG C" in joined and "--clearenv" in joined
    assert f"--ro-bind {JOB_DIR}/volumes/cfg /etc/cfg" in joined
    assert f"--bind {JOB_DIR}/volumes/tmp /scratch" in joined
    assert "--ro-bind-fd 20 /etc/one" in joined and f"{JOB_DIR}/volumes/cfg/key /etc/one" not in joined
    assert "--chdir /w" in joined and "--cap-drop ALL" in joined and "--unshare-pid" in joined


def test_command_replaces_the_entrypoint_and_drops_cmd() -> None:
    image = ImageConfig(rootfs=Path("/r"), entrypoint=("/entry",), cmd=("serve",))
    c = wire.Container(name="m", image="x")
    assert jobscript.container_argv(c, None, image) == ["/entry", "serve"]
    assert jobscript.container_argv(c.model_copy(update={"command": ["/bin/true"]}), None, image) == ["/bin/true"]
    assert jobscript.container_argv(c.model_copy(update={"args": ["a"]}), None, image) == ["/entry", "a"]
    with pytest.raises(errors.InvalidInput):
        jobscript.container_argv(c, None, ImageConfig(rootfs=Path("/r")))


def test_mount_paths_are_resolved_by_the_resolver_and_checked() -> None:
    spec = {"volumes": [{"name": "t", "secret": {"secretName": "s"}}],
            "containers": [{"name": "main", "image": "kod/testbox:0.1.0",
                            "volumeMounts": [{"name": "t", "mountPath": "/var/run/secrets/x"}]}]}
    p = plan(request(spec), resolve=lambda image, target: target.replace("/var/run", "/run"))
    assert p.mounts["main"][0].target == "/run/secrets/x" and p.mounts["main"][0].read_only
    bad = {**spec, "containers": [{"name": "main", "image": "kod/testbox:0.1.0",
                                   "volumeMounts": [{"name": "t", "mountPath": "/a", "subPath": "../../etc"}]}]}
    with pytest.raises(errors.InvalidInput, match="subPath"):
        plan(request(bad))


def _open_subpaths(tmp_path: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """The script's open_subpaths, run by bash: open `source` beneath tmp_path/vol as fd 20 and
    print what the descriptor is."""
    prelude = jobscript._PRELUDE % {"dir": shlex.quote(str(tmp_path)), "setup": 111}
    script = prelude + f'open_subpaths 20 {tmp_path}/vol {source} -- readlink /proc/self/fd/20\n'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=5)


def test_a_subpath_a_container_turned_into_a_symlink_out_of_its_volume_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vol" / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "vol" / "escape").symlink_to(tmp_path / "secret")
    (tmp_path / "vol" / "inside").symlink_to("sub")
    ok = _open_subpaths(tmp_path, tmp_path / "vol" / "sub")
    assert (ok.returncode, ok.stdout.strip()) == (0, str(tmp_path / "vol" / "sub"))
    assert _open_subpaths(tmp_path, tmp_path / "vol" / "inside").stdout.strip() == str(tmp_path / "vol" / "sub")
    bad = _open_subpaths(tmp_path, tmp_path / "vol" / "escape")
    assert bad.returncode == 126 and "leads out of its volume" in bad.stderr and bad.stdout == ""
