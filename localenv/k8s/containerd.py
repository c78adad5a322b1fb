"""The cluster's own containerd (Debian's 1.6), separate from Docker's: its own socket, root and
state, the CRI plugin with runc (cgroupfs, not systemd), CNI from /usr/lib/cni, and the locally
built pause image as the sandbox image.

`restrict_oom_score_adj = true`: these VMs lack CAP_SYS_RESOURCE in every bounding set, so no
process may set a negative oom_score_adj; containerd gives sandboxes -998 and every pod failed
with `runc create failed: ... can't get final child's PID from pipe: EOF` without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kod import toml
from localenv import procs
from localenv.k8s import cni
from localenv.k8s.context import Context
from localenv.shell import require, run

#: The sandbox ("pause") image, built from images/pause and imported before the kubelet starts.
PAUSE_IMAGE = "kod/pause:3.10"
#: containerd's namespace for Kubernetes' images and containers.
NAMESPACE = "k8s.io"
#: Runtime state (tmpfs): task bundles, rootfs mounts of running containers.
STATE_DIR = Path("/run/kod/containerd")

CRI = "io.containerd.grpc.v1.cri"


def config(ctx: Context) -> dict[str, Any]:
    p = ctx.paths
    return {
        "version": 2,
        "root": str(p.containerd_root),
        "state": str(STATE_DIR),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ],
        "grpc": {"address": str(p.containerd_socket)},
        "ttrpc": {"address": ""},
        "metrics": {"address": ""},
        "plugins": {
            CRI: {
                "sandbox_image": f"docker.io/{PAUSE_IMAGE}",
                "restrict_oom_score_adj": True,
                "enable_selinux": False,
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {"SystemdCgroup": False},
                        },
                    },
                },
                "cni": {
                    "bin_dir": cni.CNI_BIN_DIR,
                    "conf_dir": str(p.cni_conf_dir),
                    "conf_template": cni.template_path(ctx),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.internal.v1.opt": {"path": str(p.state_dir / "containerd/opt")},
        },
    }


def ctr(ctx: Context) -> list[str]:
    """The `ctr` command line for the cluster's containerd and namespace."""
    return [str(require("ctr", package="containerd")), "-a", str(ctx.paths.containerd_socket), "-n", NAMESPACE]


def _answers(ctx: Context) -> bool:
    if not ctx.paths.containerd_socket.exists():
        return False
    return run([*ctr(ctx), "version"], check=False, timeout=5).returncode == 0


def daemon(ctx: Context) -> procs.Daemon:
    p = ctx.paths
    config_file = p.config_dir / "containerd.toml"
    for d in (p.containerd_root, p.cni_conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    return procs.Daemon(
        name="containerd",
        argv=(str(require("containerd")), f"--config={config_file}"),
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        files={config_file: toml.dumps(config(ctx)), Path(cni.template_path(ctx)): cni.template_text(ctx)},
        ready=lambda: _answers(ctx),
        ready_timeout=ctx.settings.ready_timeout,
        stop_timeout=30.0,
    )
