"""localenv.slurm's pure part: which cgroup plugins this kernel allows, the node line, slurm.conf;
and the Slurm sidecar's safe mount points (sidecars/slurm/staging.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kod import errors
from localenv import slurm
from sidecars.slurm import staging
from sidecars.slurm.jobscript import Mount


def test_cgroup_v1_with_freezer_and_memory_tracks_and_confines_jobs() -> None:
    plan = slurm.cgroup_plan("tmpfs", {"freezer", "memory", "cpuset", "devices"}, swap_accounting=True)
    assert (plan.version, plan.proctrack, plan.task) == ("v1", "proctrack/cgroup", "task/cgroup,task/affinity")
    assert "CgroupPlugin=cgroup/v1" in plan.conf and "ConstrainRAMSpace=yes" in plan.conf
    assert "ConstrainSwapSpace=yes" in plan.conf


def test_cgroup_v2_uses_the_unified_plugin() -> None:
    plan = slurm.cgroup_plan("cgroup2fs", {"memory", "cpu", "pids"}, swap_accounting=True)
    assert plan.version == "v2" and "CgroupPlugin=cgroup/v2" in plan.conf
    assert not any(line.startswith("CgroupMountpoint") for line in plan.conf)


@pytest.mark.parametrize(("fs", "controllers"), [("tmpfs", {"memory"}), ("cgroup2fs", {"cpu"}), ("ext4", set())])
def test_without_usable_cgroups_slurm_tracks_by_process(fs: str, controllers: set[str]) -> None:
    plan = slurm.cgroup_plan(fs, controllers, swap_accounting=False)
    assert (plan.proctrack, plan.task, plan.conf) == ("proctrack/linuxproc", "task/affinity", ())


def test_the_node_line_comes_from_slurmd_minus_what_the_machine_keeps() -> None:
    line, cpus, memory = slurm.node_line(
        "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105\nUpTime=0\n",
        reserved_mb=4096)
    assert line.startswith("NodeName=vm CPUs=2 ") and "RealMemory=20009" in line and (cpus, memory) == (2, 20009)


def test_slurm_conf_names_the_plugins_and_the_state(tmp_path: Path) -> None:
    plan = slurm.cgroup_plan("tmpfs", {"freezer", "memory"}, swap_accounting=False)
    conf = slurm.slurm_conf(slurm.Site(root=tmp_path), "NodeName=vm CPUs=2 RealMemory=1000", plan)
    assert "ProctrackType=proctrack/cgroup" in conf and f"StateSaveLocation={tmp_path}/state" in conf
    assert "SlurmctldHost=vm" in conf and "PartitionName=kod" in conf


def test_mount_paths_follow_the_images_symlinks_inside_the_tree_only(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", tmp_path / "lib")
    os.symlink("/run", tmp_path / "var")
    os.symlink("/../../../etc", tmp_path / "escape")
    assert staging.resolve_in_tree(tmp_path, "/lib/x") == "/usr/lib/x"
    assert staging.resolve_in_tree(tmp_path, "/var/secrets") == "/run/secrets"
    assert staging.resolve_in_tree(tmp_path, "/escape/passwd") == "/etc/passwd"  # the tree's /etc, never the host's


def test_mount_points_are_made_without_following_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    staging.make_mount_point(tree, Mount(source=src, target="/etc/cfg", read_only=True))
    assert (tree / "etc" / "cfg").is_dir()
    os.symlink("/", tree / "link")
    with pytest.raises(errors.InvalidInput, match="symlink"):
        staging.make_mount_point(tree, Mount(source=src, target="/link/x", read_only=True))
    assert not Path("/x").exists() or Path("/x").is_dir()
    staging.make_mount_point(tree, Mount(source=src, target="/tmp/anything", read_only=True))  # bubblewrap's tmpfs
    assert not (tree / "tmp").exists()
