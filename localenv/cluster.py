"""The local environment as a whole: `up`, `down`, `status`, and moving images into the cluster.

    from localenv import cluster, settings
    s = settings.load()
    cluster.up(s)                                  # idempotent; a second call starts nothing
    cluster.import_images(["kod/firefox:0.1.0"])   # Docker -> the cluster's containerd
    cluster.status(s)                              # dict, as `status --json` prints it
    cluster.down(s, wipe=False)

The order of `up`: Debian packages, the Docker engine, the base image, the Kubernetes, etcd and
konnectivity builds, the host's kernel settings, certificates, then the daemons (etcd,
kube-apiserver, the konnectivity server and the real node's agent, kube-controller-manager,
kube-scheduler, containerd, kubelet, kube-proxy), the cluster's own images, RBAC and the
StorageClass, the storage provisioner, and a wait for the node to be Ready.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kod import errors
from localenv import (
    base_image, cluster_images, docker_engine, gobuild, handle, host, images_import, konnectivity, metrics_server,
    packages, procs, wipe,
)
from localenv.k8s import (
    addons, apiserver, certs, cni, containerd, controller_manager, etcd, kube_proxy, kubelet, scheduler,
    storage,
)
from localenv.handle import ClusterHandle
from localenv.k8s.context import Context
from localenv.paths import Paths, paths_for
from localenv.progress import Progress
from localenv.settings import LocalEnvSettings, load
from localenv.shell import run

#: The cluster's daemons in start order; `down` stops them in reverse.
CONTROL_PLANE: tuple[Callable[[Context], procs.Daemon], ...] = (
    etcd.daemon, apiserver.daemon, controller_manager.daemon, scheduler.daemon,
)
NODE: tuple[Callable[[Context], procs.Daemon], ...] = (containerd.daemon, kubelet.daemon, kube_proxy.daemon)
#: The tunnel to nodes behind NAT (with `konnectivity`, the default): started right after the API
#: server, whose "cluster" traffic goes through it.
TUNNEL: tuple[Callable[[Context], procs.Daemon], ...] = (konnectivity.server_daemon, konnectivity.node_agent_daemon)
DAEMON_NAMES = (
    "etcd", "kube-apiserver", konnectivity.SERVER_NAME, konnectivity.NODE_AGENT_NAME, "kube-controller-manager",
    "kube-scheduler", "containerd", "kubelet", "kube-proxy", storage.NAME, metrics_server.NAME,
)


def docker_state_dir(paths: Paths) -> Path:
    """PID file and log of a dockerd started by localenv (outside the cluster's state)."""
    return paths.data_dir / "docker"


def _say(outcome: procs.Outcome, pid: int) -> str:
    return {"running": f"already running (pid {pid})", "started": f"started (pid {pid})",
            "restarted": f"restarted with a changed configuration (pid {pid})"}[outcome]


@contextmanager
def exclusive(paths: Paths, progress: Progress) -> Iterator[None]:
    """One `up`/`down` at a time on this machine (test sessions of several components may call
    `up` at once): an flock on <data_dir>/localenv.lock, waited for with a message."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.data_dir / "localenv.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.line("==> waiting for another `localenv up/down` to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(settings: LocalEnvSettings | None = None, progress: Progress | None = None) -> Context:
    """Bring everything up, idempotently; returns the context (paths, node address)."""
    settings = settings or load()
    progress = progress or Progress()
    with exclusive(paths_for(settings), progress):
        return _up(settings, progress)


def up_or_reuse(settings: LocalEnvSettings | None = None, progress: Progress | None = None, *,
                kubeconfig: str | None = None, node_name: str | None = None,
                image_loader: str | None = None) -> ClusterHandle:
    """What `python -m localenv up` does: prepare the host (packages, Docker, base image, builds),
    then use the cluster `kubeconfig` names (the caller passes $KUBECONFIG) when it is another,
    reachable cluster, else bring the local one up. Returns a handle on the cluster to use."""
    settings = settings or load()
    progress = progress or Progress()
    paths = paths_for(settings)
    if kubeconfig and Path(kubeconfig).expanduser().resolve() != paths.admin_kubeconfig.resolve():
        with exclusive(paths, progress):
            _prepare_host(settings, progress)
        with progress.step(f"the cluster of KUBECONFIG={kubeconfig}") as step:
            reused = handle.from_kubeconfig(Path(kubeconfig).expanduser(), paths.kubectl, node_name=node_name,
                                            image_loader=image_loader)
            if reused is not None:
                step.done(f"reachable: using it (node {reused.node_name}); the local cluster is not started")
                return reused
            step.done("not reachable: setting up the local cluster instead")
    up(settings, progress)
    return handle.local(settings)


def _prepare_host(settings: LocalEnvSettings, progress: Progress) -> None:
    """Packages, the Docker engine, the base image and the Go builds (and the kubectl link)."""
    paths = paths_for(settings)
    with progress.step("Debian packages") as step:
        wanted = packages.all_packages()
        installed = packages.ensure(wanted, step)
        step.done(f"installed {' '.join(installed)}" if installed else f"all {len(wanted)} present")
    with progress.step("Docker engine") as step:
        step.done(docker_engine.ensure(docker_state_dir(paths)))
    with progress.step(f"base image {base_image.IMAGE}") as step:
        step.done(base_image.ensure(paths.base_image_cache, step))
    builds = [gobuild.kubernetes_build(paths), gobuild.etcd_build(paths)]
    if settings.konnectivity:
        builds.append(gobuild.konnectivity_build(paths))
    builds.append(gobuild.metrics_server_build(paths))
    for build in builds:
        with progress.step(f"build {build.name}") as step:
            step.done(gobuild.ensure(build, paths.logs_dir, step))
    gobuild.link_kubectl(paths)


def _up(settings: LocalEnvSettings, progress: Progress) -> Context:
    paths = paths_for(settings)
    _prepare_host(settings, progress)
    ctx = Context(settings=settings, paths=paths, node_ip=host.node_ip())
    with progress.step("host kernel settings") as step:
        changed = host.prepare()
        step.done(f"set {', '.join(changed)}" if changed else "already set")
    with progress.step("certificates and kubeconfigs") as step:
        written = certs.ensure_all(ctx)
        step.done(f"wrote {', '.join(written)}; admin: {paths.admin_kubeconfig}" if written
                  else f"in place ({paths.pki_dir})")

    for make in CONTROL_PLANE:
        d = make(ctx)
        with progress.step(d.name) as step:
            step.done(_say(*procs.ensure(d)))
        if d.name == "kube-apiserver":
            _tunnel(ctx, progress)

    with progress.step("cluster images (pause, testbox)") as step:
        step.done("; ".join(cluster_images.ensure(img, paths.logs_dir) for img in cluster_images.ALL))

    for make in NODE:
        d = make(ctx)
        with progress.step(d.name) as step:
            step.done(_say(*procs.ensure(d)))
        if d.name == "containerd":
            with progress.step("images into the cluster's containerd") as step:
                done = import_images([img.ref for img in cluster_images.ALL], settings=settings)
                step.done(f"imported {' '.join(done)}" if done else "already there")

    with progress.step("RBAC and the default StorageClass") as step:
        step.done(addons.apply(ctx))
    d = storage.daemon(ctx)
    with progress.step(d.name) as step:
        step.done(_say(*procs.ensure(d)))
    with progress.step(f"{metrics_server.NAME} (metrics.k8s.io, `kubectl top`)") as step:
        step.done(metrics_server.ensure(ctx))
    with progress.step(f"node {settings.node_name} Ready") as step:
        step.done(wait_node_ready(ctx))
    progress.total("up")
    progress.line(f"    kubeconfig: {paths.admin_kubeconfig}\n    kubectl:    {paths.kubectl}")
    return ctx


def _tunnel(ctx: Context, progress: Progress) -> None:
    """The konnectivity server and the real node's agent (or, when turned off, none left running)."""
    if not ctx.settings.konnectivity:
        for name in (konnectivity.NODE_AGENT_NAME, konnectivity.SERVER_NAME):
            if procs.stop_by_pid_file(ctx.paths.run_dir / f"{name}.pid"):
                progress.line(f"    stopped {name} (konnectivity is off)")
        return
    for make in TUNNEL:
        d = make(ctx)
        with progress.step(d.name) as step:
            step.done(_say(*procs.ensure(d)))


def kubectl(ctx: Context, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kubectl with the admin kubeconfig."""
    return run([ctx.paths.kubectl, f"--kubeconfig={ctx.paths.admin_kubeconfig}", *args],
               input=input, check=check, timeout=timeout)


def wait_node_ready(ctx: Context, timeout: float | None = None) -> str:
    """Wait until the node is Ready and pods can be created (the default ServiceAccount exists)."""
    timeout = timeout or ctx.settings.ready_timeout
    deadline = time.monotonic() + timeout
    last = "not registered yet"
    while time.monotonic() < deadline:
        proc = kubectl(ctx, "get", "node", ctx.settings.node_name, "-o", "json", check=False)
        if proc.returncode == 0:
            node = json.loads(proc.stdout)
            conds = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
            ready = conds.get("Ready", {})
            if ready.get("status") == "True":
                sa = kubectl(ctx, "get", "serviceaccount", "default", "-n", "default", "-o", "name", check=False)
                if sa.returncode == 0:
                    cidr = node.get("spec", {}).get("podCIDR", "?")
                    return f"Ready (InternalIP {ctx.node_ip}, pod CIDR {cidr})"
                last = "the default ServiceAccount does not exist yet"
            else:
                last = f"{ready.get('reason', '?')}: {ready.get('message', '')}"
        time.sleep(0.5)
    raise errors.Unavailable(
        f"node {ctx.settings.node_name} is not Ready after {timeout:.0f} s ({last})",
        hint=f"see the logs in {ctx.paths.logs_dir} (kubelet.log, containerd.log)",
    )


def import_images(refs: Iterable[str], *, settings: LocalEnvSettings | None = None) -> list[str]:
    """Copy Docker images into the cluster's containerd, skipping those already there with the
    same image id; returns the refs imported. Pods use them with imagePullPolicy IfNotPresent."""
    paths = paths_for(settings or load())
    return images_import.import_images(refs, paths.containerd_socket)


def _stop_pods(ctx: Context) -> int:
    """Kill the containers of the cluster's containerd (they would outlive it in their shims):
    SIGKILL every task, wait (at most 15 s) until all are stopped, then delete them."""
    if not ctx.paths.containerd_socket.exists() or procs.running_pid(ctx.paths.run_dir / "containerd.pid") is None:
        return 0
    base = containerd.ctr(ctx)

    def tasks() -> dict[str, str]:
        lines = run([*base, "tasks", "ls"], check=False, timeout=30).stdout.splitlines()[1:]
        return {cols[0]: cols[-1] for cols in (ln.split() for ln in lines) if len(cols) >= 3}

    found = tasks()
    for t, state in found.items():
        if state != "STOPPED":
            run([*base, "tasks", "kill", "-s", "SIGKILL", t], check=False, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(s != "STOPPED" for s in tasks().values()):
        time.sleep(0.2)
    for t in found:
        run([*base, "tasks", "delete", t], check=False, timeout=30)
    return len(found)


def down(settings: LocalEnvSettings | None = None, progress: Progress | None = None, *, wipe_state: bool = False,
         stop_docker: bool = False) -> None:
    """Stop the cluster's daemons (by PID, verified); `wipe_state` also deletes all of its state
    and what it left at fixed paths; `stop_docker` stops dockerd if localenv started it."""
    settings = settings or load()
    progress = progress or Progress()
    with exclusive(paths_for(settings), progress):
        _down(settings, progress, wipe_state=wipe_state, stop_docker=stop_docker)


def _down(settings: LocalEnvSettings, progress: Progress, *, wipe_state: bool, stop_docker: bool) -> None:
    paths = paths_for(settings)
    ctx = Context(settings=settings, paths=paths, node_ip="127.0.0.1")
    for name in (metrics_server.NAME, storage.NAME, "kube-proxy", "kubelet"):
        with progress.step(f"stop {name}") as step:
            pid = procs.stop_by_pid_file(paths.run_dir / f"{name}.pid")
            step.done(f"stopped pid {pid}" if pid else "was not running")
    with progress.step("stop the pods' containers") as step:
        step.done(f"killed {_stop_pods(ctx)} containers")
    for name in ("containerd", "kube-scheduler", "kube-controller-manager", konnectivity.NODE_AGENT_NAME,
                 konnectivity.SERVER_NAME, "kube-apiserver", "etcd"):
        with progress.step(f"stop {name}") as step:
            pid = procs.stop_by_pid_file(paths.run_dir / f"{name}.pid")
            step.done(f"stopped pid {pid}" if pid else "was not running")
    if wipe_state:
        with progress.step("remove kube-proxy's, the kubelet's and CNI's iptables rules") as step:
            if (paths.k8s_bin / "kube-proxy").exists():
                run(kube_proxy.cleanup_argv(ctx), check=False, timeout=120)
            step.done(f"removed {wipe.iptables_rules()} chains")
        with progress.step("remove the pods' network") as step:
            step.done(", ".join(wipe.network(settings.cni_bridge)) or "nothing left")
        with progress.step("unmount and delete the cluster's state") as step:
            n = wipe.unmount_all(paths.state_dir, containerd.STATE_DIR, Path("/var/lib/kubelet"))
            wipe.remove_tree(containerd.STATE_DIR)
            wipe.remove_tree(paths.state_dir)
            fixed = wipe.fixed_paths(paths.pod_logs, cni.NETWORK_NAME)
            step.done(f"unmounted {n}; deleted {paths.state_dir}, {containerd.STATE_DIR}"
                      + (f", {', '.join(fixed)}" if fixed else ""))
    if stop_docker:
        with progress.step("stop dockerd (only if localenv started it)") as step:
            pid = docker_engine.stop(docker_state_dir(paths))
            step.done(f"stopped pid {pid}" if pid else "not started by localenv: left running")
    progress.total("down")


def status(settings: LocalEnvSettings | None = None) -> dict[str, Any]:
    """The state of every daemon, the node and the API server, and the paths, as data."""
    settings = settings or load()
    paths = paths_for(settings)
    daemons: dict[str, Any] = {}
    tunnel = (konnectivity.SERVER_NAME, konnectivity.NODE_AGENT_NAME)
    for name in (n for n in DAEMON_NAMES if settings.konnectivity or n not in tunnel):
        record = procs.read_record(paths.run_dir / f"{name}.pid")
        alive = bool(record and procs.is_alive(record))
        daemons[name] = {
            "running": alive,
            "pid": record.pid if record and alive else None,
            "log": str(paths.logs_dir / f"{name}.log"),
        }
    dockerd_pid = procs.running_pid(docker_state_dir(paths) / "dockerd.pid")
    docker_ok = docker_engine.answers()
    out: dict[str, Any] = {
        "kubernetes_version": settings.kubernetes_version,
        "etcd_version": settings.etcd_version,
        "node_name": settings.node_name,
        "cluster_cidr": settings.cluster_cidr,
        "service_cidr": settings.service_cidr,
        "storage_class": settings.storage_class,
        "apiserver_url": f"https://127.0.0.1:{settings.ports.apiserver}",
        "ports": settings.ports.model_dump(),
        "paths": paths.as_dict(),
        "docker": {"running": docker_ok, "started_by_localenv": dockerd_pid is not None, "pid": dockerd_pid},
        "daemons": daemons,
        "apiserver_ready": False,
        "node": None,
    }
    if daemons["kube-apiserver"]["running"] and paths.admin_kubeconfig.exists() and paths.kubectl.exists():
        ctx = Context(settings=settings, paths=paths, node_ip="")
        readyz = kubectl(ctx, "get", "--raw", "/readyz", check=False, timeout=10)
        out["apiserver_ready"] = readyz.returncode == 0 and readyz.stdout.strip() == "ok"
        node = kubectl(ctx, "get", "node", settings.node_name, "-o", "json", check=False, timeout=10)
        if node.returncode == 0:
            n = json.loads(node.stdout)
            conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
            addrs = {a["type"]: a["address"] for a in n.get("status", {}).get("addresses", [])}
            out["node"] = {"ready": conds.get("Ready") == "True", "pod_cidr": n.get("spec", {}).get("podCIDR"),
                           "internal_ip": addrs.get("InternalIP")}
        out["metrics_api"] = metrics_server.api_status(ctx)
    out["up"] = bool(out["apiserver_ready"] and out["node"] and out["node"]["ready"]
                     and all(d["running"] for d in daemons.values()))
    return out
