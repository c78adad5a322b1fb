"""A handle on a cluster to test or demo against: the local one, or the one KUBECONFIG names.

    from localenv.handle import local, from_kubeconfig
    c = local()                       # ~/.local/share/kod/cluster/admin.kubeconfig
    c.kubectl("get", "nodes")         # CompletedProcess (text); raises on failure unless check=False
    c.kubectl_json("get", "pods", "-n", "x")
    c.import_images(["kod/testbox:0.1.0"])
    c.provide_images(["kod/firefox:0.1.0"])   # imported, and reported by a node (what cloudify checks)
    running()                         # the cluster in use if one answers (KUBECONFIG's, else the local one), else None

Reusing another cluster (KUBECONFIG set to a reachable cluster): localenv starts nothing and
cannot copy images into that cluster's nodes; `import_images` then runs the command in
KOD_IMAGE_LOADER once per image (e.g. `kind load docker-image --name dev`), or, when that is
unset, assumes the images are already on the nodes (pushed to a registry they can pull from, or
pre-loaded) and prints a note.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kod import errors, labels
from localenv import images_import
from localenv.paths import Paths, paths_for
from localenv.settings import LocalEnvSettings, load


@dataclass(frozen=True)
class ClusterHandle:
    """Where a cluster is and how to talk to it."""

    kubeconfig: Path
    kubectl_path: Path
    #: The real node to run pods on (the local cluster's `kod-worker`).
    node_name: str
    #: True when this is an existing cluster named by KUBECONFIG, not the local one.
    reused: bool = False
    #: The local cluster's containerd socket (None for a reused cluster).
    containerd_socket: Path | None = None
    #: For reused clusters: a command (shell words) run as `<loader> <image>` for each image.
    image_loader: str | None = None
    settings: LocalEnvSettings | None = field(default=None, compare=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment entries that point tools at this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises `errors.Internal` with its stderr on failure."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise errors.Internal(f"`kubectl {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl_json(self, *args: str, timeout: float = 120) -> Any:
        """kubectl ... -o json, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, *objects: Mapping[str, Any], namespace: str | None = None) -> None:
        """`kubectl apply` objects built as data."""
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def import_images(self, refs: Iterable[str]) -> list[str]:
        """Make local Docker images usable by the cluster's pods (imagePullPolicy IfNotPresent or
        Never); returns the refs that were copied (those already there are skipped)."""
        refs = list(refs)
        if self.containerd_socket is not None:
            return images_import.import_images(refs, self.containerd_socket)
        if self.image_loader:
            for ref in refs:
                subprocess.run([*shlex.split(self.image_loader), ref], check=True)
            return refs
        print(f"note: reused cluster: assuming {', '.join(refs)} are available on its nodes", file=sys.stderr)
        return []

    def remove_images(self, refs: Iterable[str]) -> list[str]:
        """Remove images from the local cluster's containerd (`ctr -n k8s.io images rm`): a node
        without them, for tests. Returns the containerd names it had. A reused cluster's nodes are
        out of reach: Unavailable."""
        if self.containerd_socket is None:
            raise errors.Unavailable("the nodes of a reused cluster are out of localenv's reach: it cannot remove images there")
        return images_import.remove_images(refs, self.containerd_socket)

    def wait_images_reported(self, refs: Iterable[str], timeout: float = 120.0) -> None:
        """Until a node reports every image of `refs` in its status. The kubelet reports an
        imported image a few seconds later, and cloudify refuses to start a session before a
        node has the app's image. Raises Unavailable after `timeout` seconds."""
        refs = list(refs)
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.kubectl_json("get", "nodes")["items"]
            names = {n for node in nodes for img in node["status"].get("images") or [] for n in img.get("names") or []}
            if all(ref in names or f"docker.io/{ref}" in names for ref in refs):
                return
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"no node reports the images {', '.join(refs)} after {timeout:.0f} s",
                    hint="see `kubectl get nodes -o yaml` (status.images) and the kubelet's log")
            time.sleep(1.0)

    def provide_images(self, refs: Iterable[str], timeout: float = 120.0) -> list[str]:
        """`import_images`, then, when this handle could copy them (the local containerd, or an
        image loader), wait until a node reports them: what cloudify checks before it starts a
        session. Returns the refs that were copied."""
        refs = list(refs)
        done = self.import_images(refs)
        if self.containerd_socket is not None or self.image_loader:
            self.wait_images_reported(refs, timeout=timeout)
        return done

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def local(settings: LocalEnvSettings | None = None) -> ClusterHandle:
    """The local cluster (whether it runs or not: see `localenv.cluster.up`)."""
    settings = settings or load()
    paths: Paths = paths_for(settings)
    return ClusterHandle(
        kubeconfig=paths.admin_kubeconfig,
        kubectl_path=paths.kubectl,
        node_name=settings.node_name,
        containerd_socket=paths.containerd_socket,
        settings=settings,
    )


def running(settings: LocalEnvSettings | None = None, *, kubeconfig: str | None = None, node_name: str | None = None,
            image_loader: str | None = None) -> ClusterHandle | None:
    """The cluster to use, if one answers, starting nothing: the one `kubeconfig` names (the
    caller passes $KUBECONFIG) when it is another cluster, else the local one; None when it does
    not answer. The same choice as `localenv.cluster.up_or_reuse`, without its side effects."""
    settings = settings or load()
    paths = paths_for(settings)
    if kubeconfig and Path(kubeconfig).expanduser().resolve() != paths.admin_kubeconfig.resolve():
        return from_kubeconfig(Path(kubeconfig).expanduser(), paths.kubectl, node_name=node_name,
                               image_loader=image_loader)
    target = local(settings)
    return target if reachable(target.kubeconfig, target.kubectl_path) else None


def reachable(kubeconfig: Path, kubectl_path: Path, timeout: float = 10) -> bool:
    """True when the API server of `kubeconfig` answers /readyz with ok."""
    try:
        proc = subprocess.run([str(kubectl_path), f"--kubeconfig={kubeconfig}", "get", "--raw", "/readyz"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def from_kubeconfig(kubeconfig: Path, kubectl_path: Path, *, node_name: str | None = None,
                    image_loader: str | None = None) -> ClusterHandle | None:
    """A handle on an existing cluster, or None when it cannot be reached. The node is
    `node_name`, else the first Ready node that is not a virtual kubelet and has no NoSchedule
    taint."""
    if not reachable(kubeconfig, kubectl_path):
        return None
    handle = ClusterHandle(kubeconfig=kubeconfig, kubectl_path=kubectl_path, node_name=node_name or "",
                           reused=True, image_loader=image_loader)
    if node_name:
        return handle
    for node in handle.kubectl_json("get", "nodes")["items"]:
        conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        taints = node["spec"].get("taints") or []
        virtual = (node["metadata"].get("labels") or {}).get(labels.NODE_TYPE) == labels.VIRTUAL_KUBELET
        if conds.get("Ready") == "True" and not virtual and not any(t.get("effect") == "NoSchedule" for t in taints):
            return ClusterHandle(kubeconfig=kubeconfig, kubectl_path=kubectl_path, node_name=node["metadata"]["name"],
                                 reused=True, image_loader=image_loader)
    raise errors.Unavailable(f"the cluster of {kubeconfig} has no Ready, schedulable node")
