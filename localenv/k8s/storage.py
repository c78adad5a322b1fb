"""The dynamic hostPath provisioner (localenv.provisioner) as a daemon of the cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from localenv import procs
from localenv.k8s import addons
from localenv.k8s.context import Context

NAME = "storage-provisioner"


def ready_file(ctx: Context) -> Path:
    """The provisioner writes its PID here once its first reconcile succeeded."""
    return ctx.paths.run_dir / f"{NAME}.ready"


def _ready(ctx: Context, pid_file: Path) -> bool:
    pid = procs.running_pid(pid_file)
    try:
        return pid is not None and ready_file(ctx).read_text().strip() == str(pid)
    except OSError:
        return False


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    project_root = Path(__file__).resolve().parents[2]
    argv = (
        sys.executable, "-m", "localenv.provisioner",
        f"--kubeconfig={ctx.kubeconfig(NAME)}",
        f"--root={p.volumes_dir}",
        f"--node={s.node_name}",
        f"--provisioner={addons.PROVISIONER_NAME}",
        f"--ready-file={ready_file(ctx)}",
    )
    pid_file = p.run_dir / f"{NAME}.pid"
    env = {**os.environ, "PYTHONPATH": str(project_root), "PYTHONUNBUFFERED": "1"}
    return procs.Daemon(
        name=NAME,
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(p.kubeconfig_dir / f"{NAME}.kubeconfig", *sorted(Path(__file__).resolve().parents[1].glob("provisioner.py"))),
        env=env,
        cwd=project_root,
        ready=lambda: _ready(ctx, pid_file),
        ready_timeout=s.ready_timeout,
    )
