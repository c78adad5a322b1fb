"""Debian packages the project needs, per component; `up` installs whatever is missing.

Other components add theirs to `REQUIRED` (one entry per component, a short comment saying
why). Installation is idempotent: `dpkg-query` first, `apt-get` only for what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from kod import errors
from localenv.progress import Step
from localenv.shell import run, which

REQUIRED: dict[str, tuple[str, ...]] = {
    # the Docker engine that runs the desktop side and builds every image
    "docker": ("docker.io",),
    # the base image debian:bookworm-slim, made locally because no registry can be reached
    "base-image": ("debootstrap",),
    # the one-machine cluster: its container runtime, pod networking, kube-proxy's tools, the PKI
    "cluster": (
        "containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "socat",
        "ethtool", "openssl", "iproute2", "kmod",
    ),
    # the user's desktop in tests and the demo: an X server, sound, the VNC viewer, a browser
    "desktop": (
        "xvfb", "x11-utils", "xauth", "xdotool", "pulseaudio", "pulseaudio-utils", "sox",
        "tigervnc-viewer", "tigervnc-tools", "openssh-client", "chromium", "imagemagick",
        # X0tigervnc: `make demo` on a headless machine shows its virtual desktop over VNC
        "tigervnc-scraping-server",
    ),
    # what the end-to-end tests drive the project with, as a user would: curl (interlink's API
    # over its unix socket) and Debian's docker-compose 1.29 (docker-compose.yaml; bookworm has
    # no compose plugin package). Installed here, once, not by the tests themselves.
    "tests": ("curl", "docker-compose"),
    # the desktop at home (localenv.netlab, tests/e2e/test_home_*.py): Firefox installed on the
    # desktop, which cloudify runs locally when the link to the cluster is too slow
    "home": ("firefox-esr",),
    # the Slurm sidecar's HPC site (localenv.slurm, `python -m localenv slurm`): munge and Slurm
    # 22.05's controller, node daemon and commands; bubblewrap runs each pod's containers inside
    # its job (docs/slurm.md says why not runc)
    "slurm": ("munge", "slurmctld", "slurmd", "slurm-client", "bubblewrap"),
}


def all_packages(required: Mapping[str, Iterable[str]] = REQUIRED) -> list[str]:
    """Every package of every component, each once, in a stable order."""
    seen: dict[str, None] = {}
    for pkgs in required.values():
        for p in pkgs:
            seen.setdefault(p, None)
    return list(seen)


def missing(packages: Iterable[str]) -> list[str]:
    """The packages of `packages` that dpkg does not list as installed."""
    pkgs = list(packages)
    if not pkgs:
        return []
    proc = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *pkgs], check=False)
    installed = {
        line.split()[0].split(":")[0]
        for line in proc.stdout.splitlines()
        if line.endswith(" installed")
    }
    return [p for p in pkgs if p not in installed]


def ensure(packages: Iterable[str], step: Step | None = None) -> list[str]:
    """Install the missing ones with apt-get (needs root); returns what was installed."""
    todo = missing(packages)
    if not todo:
        return []
    if os.geteuid() != 0:
        raise errors.Forbidden(
            f"Debian packages missing: {' '.join(todo)}",
            hint=f"run as root, or `sudo apt-get install {' '.join(todo)}` first",
        )
    if which("apt-get") is None:
        raise errors.Unavailable("apt-get not found: this set-up needs Debian 12 (bookworm)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if step:
        step.info(f"apt-get install {' '.join(todo)}")
    hint = "check the network access to deb.debian.org, then run `python -m localenv up` again"
    run(["apt-get", "update", "-qq"], env=env, timeout=900, hint=hint)
    run(["apt-get", "install", "-y", "-qq", *todo], env=env, timeout=3600, hint=hint)
    still = missing(todo)
    if still:
        raise errors.Internal(f"apt-get did not install {' '.join(still)}", hint=hint)
    return todo
