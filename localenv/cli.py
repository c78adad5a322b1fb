"""The command line of the local environment manager.

    python -m localenv up [--demo]       # everything, idempotently; a second run starts nothing
    python -m localenv demo [APP]        # up --demo, then `cloudify APP` on your screen or a virtual one
    python -m localenv status [--json]   # what runs, the node, the paths
    python -m localenv images [IMAGE...] # build the project's images, import the apps' and viewer's into the cluster
    python -m localenv down [--wipe] [--docker]
    python -m localenv slurm [up|down|status]   # this machine's Slurm (localenv.slurm)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from kod import console, errors
from localenv import cluster, handle, images as images_mod, settings as settings_mod
from localenv.progress import Progress
from localenv.settings import LocalEnvSettings


def _optional(module: str) -> ModuleType | None:
    """Another component's module (localenv.images, localenv.desktop_stack), when it exists yet."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def cmd_up(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    env = os.environ
    target = cluster.up_or_reuse(s, progress, kubeconfig=env.get("KUBECONFIG"), node_name=env.get("KOD_TEST_NODE"),
                                 image_loader=env.get("KOD_IMAGE_LOADER"))
    if args.demo:
        for module in ("localenv.images", "localenv.desktop_stack"):
            if _optional(module) is None:
                raise errors.Unavailable(f"{module} does not exist yet: `up --demo` cannot finish",
                                         hint="run plain `python -m localenv up`")
        images = _optional("localenv.images")
        stack = _optional("localenv.desktop_stack")
        assert images is not None and stack is not None
        images.build_and_import(target, progress)
        stack.up(progress=progress, cluster=target)
    if env.get("KOD_LOCALENV_SLURM") == "1":
        from localenv import slurm

        slurm.hpc_up(s, progress)
    return 0


def cmd_slurm(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    from localenv import slurm

    if args.action == "up":
        if args.no_node:
            site = slurm.up(s, progress)
            progress.line(f"    slurm node: {site.sinfo()}")
        else:
            stack = slurm.hpc_up(s, progress)
            progress.line(f"    virtual HPC node {stack.node_name} is Ready (its pods run as Slurm jobs)")
        return 0
    if args.action == "down":
        if args.no_node:
            slurm.down(s, progress)
        else:
            slurm.hpc_down(s, progress)
        return 0
    st = slurm.status(s)
    print(json.dumps(st, indent=2))
    return 0 if all(st["daemons"].values()) else 3


def cmd_images(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    env = os.environ
    # Starts nothing: the images go into the cluster that answers (KUBECONFIG's, else the local one).
    target = handle.running(s, kubeconfig=env.get("KUBECONFIG"), node_name=env.get("KOD_TEST_NODE"),
                            image_loader=env.get("KOD_IMAGE_LOADER"))
    images_mod.build_and_import(target, progress, only=args.images or None)
    return 0


def cmd_demo(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    from localenv import demo

    options = demo.DemoOptions(app=args.app, once=args.once,
                               screenshot=Path(args.screenshot).expanduser().absolute() if args.screenshot else None)
    return demo.run(s, options, progress, os.environ)


def cmd_down(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    if args.demo:
        stack = _optional("localenv.desktop_stack")
        if stack is not None:
            stack.down(progress=progress)
    cluster.down(s, progress, wipe_state=args.wipe, stop_docker=args.docker)
    return 0


def _print_status(st: dict) -> None:
    print(f"cluster: {'UP' if st['up'] else 'NOT UP'}  (Kubernetes {st['kubernetes_version']}, node {st['node_name']})")
    d = st["docker"]
    print(f"  docker engine            {'running' if d['running'] else 'NOT running'}"
          + (" (started by localenv)" if d["started_by_localenv"] else ""))
    for name, info in st["daemons"].items():
        print(f"  {name:<24} {'running, pid ' + str(info['pid']) if info['running'] else 'stopped'}")
    print(f"  API server /readyz       {'ok' if st['apiserver_ready'] else 'not ready'}  ({st['apiserver_url']})")
    node = st["node"]
    print(f"  node                     " + (f"{'Ready' if node['ready'] else 'NotReady'}, {node['internal_ip']}, "
                                        f"pod CIDR {node['pod_cidr']}" if node else "not registered"))
    if "metrics_api" in st:
        m = st["metrics_api"]
        print(f"  metrics.k8s.io           " + ("available (`kubectl top`)" if m["available"] else
                                                 f"NOT available: {m['message']}"))
    p = st["paths"]
    print(f"kubeconfig: {p['admin_kubeconfig']}\nkubectl:    {p['kubectl']}\nlogs:       {p['logs_dir']}")


def cmd_status(s: LocalEnvSettings, args: argparse.Namespace, progress: Progress) -> int:
    st = cluster.status(s)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    return 0 if st["up"] else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localenv",
        description="Set up this machine for KubernetesOnDesktop: Debian packages, the Docker engine, "
        "the debian:bookworm-slim base image, and a real one-machine Kubernetes cluster (built from "
        "the Go module proxy). Every command is idempotent. Settings: KOD_LOCALENV_* variables or "
        "~/.config/kod/localenv.toml.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "up", help="install, build and start what is missing (a second run starts nothing); when KUBECONFIG "
        "names another reachable cluster, use it instead of starting the local one",
    )
    p.add_argument("--demo", action="store_true",
                   help="also build the project's images and start the desktop stack (for `make demo`)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser(
        "demo", help="`up --demo`, then run `cloudify APP` (Firefox by default) and show it",
        description="Set up everything (`up --demo`: packages, Docker, the cluster, the app's and the viewer's "
        "images, the desktop stack with the virtual node), then run `cloudify APP`. With a desktop (DISPLAY's X "
        "server and PulseAudio answer) the app shows there. Without one, a virtual desktop is started (Xvfb, "
        "PulseAudio with null-sink speakers; files under ~/.local/share/kod/demo/) with a VNC server on "
        "127.0.0.1 and a random password: the command prints how to watch it live (vncviewer here, or "
        "`ssh -L` from another machine); once the app's window shows, a screenshot is saved. The session "
        "runs until the app is closed or Ctrl-C (passed on to cloudify, which removes what it created). "
        "Exit code: cloudify's (0 for a --once session that ended as asked).",
    )
    p.add_argument("app", nargs="?", default="firefox", metavar="APP",
                   help="the app: firefox (default), libreoffice, blender, cuda-blender")
    p.add_argument("--once", action="store_true",
                   help="end the session (as Ctrl-C does) right after the window showed and the screenshot was taken")
    p.add_argument("--screenshot", metavar="PATH",
                   help="where the screenshot of the app's window goes (PNG; default ~/.local/share/kod/demo/APP.png "
                   "on a virtual desktop, none on your own)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("down", help="stop the cluster's daemons (by PID)")
    p.add_argument("--wipe", action="store_true",
                   help="also delete the cluster's state (etcd data, certificates, volumes, containers) and "
                   "what it left at fixed paths (iptables rules, the pod bridge, /var/lib/kubelet, /var/lib/cni)")
    p.add_argument("--docker", action="store_true", help="also stop dockerd, if localenv started it")
    p.add_argument("--demo", action="store_true", help="also stop the desktop stack")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="what runs; exit code 0 when the cluster is up, 3 when not")
    p.add_argument("--json", action="store_true", help="machine-readable, with every path and port")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "images", help="build the project's images and import the apps' and the viewer's into the cluster",
        description="Build the project's images (those whose inputs changed; see localenv.images), then import "
        "the session images among them (the apps' and the viewer's) into the nodes of the cluster that answers "
        "(KUBECONFIG's, else the local one; with a reused cluster through KOD_IMAGE_LOADER) and wait until a "
        "node reports them, so that cloudify finds them. Starts no cluster: without one the images are only built.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="only these images (and the ones they build FROM): " + ", ".join(s.name for s in images_mod.specs()))
    p.set_defaults(func=cmd_images)
    p = sub.add_parser(
        "slurm", help="this machine's Slurm (munge, slurmctld, slurmd) and the virtual HPC node on it",
        description="Install, configure and start a one-machine Slurm and the virtual HPC node hpc-local whose "
        "pods run as its jobs (idempotent; see localenv/slurm.py and docs/slurm.md), stop both (deleting the "
        "node's pods and cancelling jobs), or print what runs.",
    )
    p.add_argument("action", nargs="?", default="up", choices=["up", "down", "status"])
    p.add_argument("--no-node", action="store_true",
                   help="only Slurm itself, not the virtual HPC node (hpc-local) whose pods run as its jobs")
    p.set_defaults(func=cmd_slurm)
    return parser


def main(argv: list[str] | None = None) -> None:
    # `make demo 2>&1 | tee log`, then Ctrl-C: tee dies first. Lost output must not stop the
    # demo's cleanup nor change its exit code (nor end `status | head` with a traceback).
    console.install()
    args = build_parser().parse_args(argv)
    progress = Progress(quiet=args.quiet)
    try:
        s = settings_mod.load()
        code = args.func(s, args, progress)
    except errors.KodError as exc:
        print(f"\nerror: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"what to do: {exc.hint}", file=sys.stderr)
        code = getattr(exc, "exit_code", 1)  # a failed cloudify session (localenv.demo) passes on its own
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
