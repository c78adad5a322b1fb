"""The desktop side of the virtual node: the Docker sidecar, interlink and vk_bridge, as background
processes of this machine, registered as a node of the cluster.

    from localenv import desktop_stack
    stack = desktop_stack.up(progress)     # idempotent: what already runs is left alone
    stack.node_name                        # "desktop-<hostname>", Ready
    desktop_stack.kill("vk", signal.SIGKILL); desktop_stack.start("vk")   # tests
    desktop_stack.status(); desktop_stack.down(progress)

What `up` does, in order:

1. random bearer tokens for interlink and the sidecar (files 0600, made once, never logged);
2. `kubectl apply -k kustomizations/` (namespace kod-system, the RBAC of the kubelet's TLS
   bootstrap, the admission policy for virtual nodes, cloudify users' role) with the admin
   kubeconfig; the cluster-wide role of earlier versions is removed; the owner's user
   (localenv.users: its kubeconfig, namespace kod-<user> and RBAC) and the node's entry in the
   registry of virtual nodes (localenv.node_registry), which the admission policy reads;
3. vk_bridge's bootstrap kubeconfig (0600): the server, its CA and, unless vk_bridge's client
   certificate for `system:node:<node>` still works, a new bootstrap token valid for
   `bootstrap_token_minutes` (localenv.node_join);
4. one TOML config per process (0600), built as data;
5. starts `kod-docker-sidecar`, `kod-interlink` and `kod-vk` (console scripts of this virtualenv)
   by PID with their logs under `~/.local/share/kod/desktop/logs/`, each waited for: the two
   services answer /v1/ping; vk_bridge gets its client certificate (auto-approved by the
   cluster), its kubelet-serving CSR is approved after checking requester, subject, usages, key
   and SANs (only this machine's addresses and names), and the node is Ready with a fresh Lease;
6. the bootstrap token, now used, is deleted;
7. with `konnectivity_server` set (a desktop the API server cannot dial: behind NAT, at home), a
   konnectivity agent (`tunnel`) that dials out to the cluster's konnectivity server as the node
   (vk_bridge's client certificate) and carries the API server's calls to the kubelet API back
   (localenv.konnectivity, docs/home.md); it is restarted whenever it exits.

Everything lives under `<data_dir>/desktop/` (`data_dir` from localenv's settings). Settings:
`KOD_DESKTOP_*` variables or `~/.config/kod/desktop.toml` (`StackSettings`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kod import errors, toml
from kod.files import write_private
from kod.names import user_namespace, virtual_node_name
from kod.settings import config_home, load_settings
from localenv import handle as handle_mod
from localenv import konnectivity, node_join, node_registry, procs, users
from localenv import settings as localenv_settings
from localenv.progress import Progress

ENV_PREFIX = "KOD_DESKTOP_"
NAMESPACE = "kod-system"
#: The three processes, in start order (stop order is the reverse); `processes()` adds the tunnel.
NAMES = ("sidecar", "interlink", "vk")
TUNNEL = "tunnel"
SCRIPTS = {"sidecar": "kod-docker-sidecar", "interlink": "kod-interlink", "vk": "kod-vk", TUNNEL: "konnectivity-agent"}
#: The sidecar's console script per `StackSettings.sidecar_kind`.
SIDECAR_SCRIPTS = {"docker": "kod-docker-sidecar", "slurm": "kod-slurm-sidecar"}
REPO = Path(__file__).resolve().parents[1]
#: The packages the three processes run: when their code changes, `up` restarts them.
CODE = tuple(REPO / name for name in ("kod", "vk_bridge", "interlink", "sidecars"))
KUSTOMIZATION = REPO / "kustomizations"


class StackSettings(BaseModel):
    """How the desktop stack is set up. Ports are on 127.0.0.1 except the kubelet API's, which
    the API server must reach at the node's address."""

    model_config = ConfigDict(extra="forbid")

    node_name: str = Field(default_factory=virtual_node_name, description="The virtual node's name.")
    user: str = Field(default_factory=lambda: os.environ.get("USER") or "root", description="kod.io/desktop-of label.")
    interlink_port: int = Field(default=3000, ge=1, le=65535, description="interlink's TCP port.")
    interlink_host: str = Field(
        default="127.0.0.1",
        description="interlink's address. 0.0.0.0 serves a vk_bridge that runs in the cluster "
        "(kustomizations/in-cluster); its bearer token then crosses the network in clear: use it on a "
        "trusted network or behind TLS.",
    )
    sidecar_port: int = Field(default=4000, ge=1, le=65535, description="The Docker sidecar's TCP port (127.0.0.1).")
    kubelet_port: int = Field(default=10260, ge=1, le=65535, description="vk_bridge's kubelet HTTPS API port.")
    max_pods: int = Field(
        default=250, ge=1, description="Pods the node accepts (more than a kubelet's 110: desktop pods are small)."
    )
    bootstrap_token_minutes: int = Field(
        default=60, ge=5, description="Lifetime of the bootstrap token vk_bridge joins with (deleted once it has "
        "its certificate; a new one is made only when that certificate no longer works).",
    )
    vk_identity: dict[str, Any] = Field(
        default_factory=dict, description="More of vk_bridge's identity settings (vk_bridge/settings.py, "
        "IdentitySettings: certificate_seconds, rotation_fraction, ...).",
    )
    ready_timeout: float = Field(default=120.0, gt=0, description="Seconds each process gets to become ready.")
    log_level: str = Field(default="info", description="Log level of the three processes.")
    sidecar_name: str = Field(
        default="docker", description="The Docker sidecar's name; it labels its Docker objects, so two stacks on "
        "one engine never touch each other's containers.",
    )
    directory: str = Field(default="desktop", description="The stack's directory under localenv's data_dir.")
    sidecar_kind: Literal["docker", "slurm"] = Field(
        default="docker", description="Which sidecar the stack's interlink routes to: the Docker sidecar (the "
        "desktop), or the Slurm sidecar (a virtual HPC node whose pods run as Slurm jobs: localenv.slurm).",
    )
    slurm: dict[str, Any] = Field(
        default_factory=dict, description="More settings of the Slurm sidecar (sidecars/slurm/settings.py) when "
        "sidecar_kind is slurm: work_dir, partition, poll_seconds, ...",
    )
    docker_url: str | None = Field(
        default=None, description="The Docker engine the sidecar runs pods in (e.g. unix:///run/x/docker.sock); "
        "default the local one.",
    )
    konnectivity_server: str | None = Field(
        default=None, description="HOST:PORT of the cluster's konnectivity server (a local cluster runs one on "
        "port 8132 of its host). Set it when the API server cannot reach this desktop (behind NAT): a "
        "konnectivity agent then dials out to it, and `kubectl logs` of the node's pods comes back that way.",
    )
    tunnel_health_port: int = Field(default=8093, ge=1, le=65535, description="The agent's /readyz (127.0.0.1).")
    tunnel_admin_port: int = Field(default=8094, ge=1, le=65535, description="The agent's admin port (127.0.0.1).")
    admission_allow: list[str] = Field(
        default_factory=list,
        description='Identities besides the owner\'s namespace (kod-<user>) whose pods the node runs: "namespace" '
        'or "namespace/serviceaccount" (vk_bridge\'s admission.allow, and the node\'s entry in the registry).',
    )

    @property
    def owner_namespace(self) -> str:
        """The namespace of the stack's owner: what its node runs pods of."""
        return user_namespace(self.user)

    @property
    def allowed(self) -> list[str]:
        """The identities the node runs pods of, the owner's namespace first."""
        return [self.owner_namespace, *self.admission_allow]

    def private(self, suffix: str, port_offset: int, kubelet_port_offset: int = 0, **update: Any) -> StackSettings:
        """A second stack next to this one (for tests and benchmarks that kill or load its
        processes): node, sidecar and directory named `<name>-<suffix>`, interlink's and the
        sidecar's ports moved by `port_offset` and the kubelet API's by `kubelet_port_offset`;
        `update` sets other fields."""
        return self.model_copy(update={
            "node_name": f"{self.node_name}-{suffix}", "interlink_port": self.interlink_port + port_offset,
            "sidecar_port": self.sidecar_port + port_offset, "kubelet_port": self.kubelet_port + kubelet_port_offset,
            "tunnel_health_port": self.tunnel_health_port + port_offset,
            "tunnel_admin_port": self.tunnel_admin_port + port_offset,
            "sidecar_name": f"{self.sidecar_name}-{suffix}", "directory": f"{self.directory}-{suffix}", **update,
        })


def load_stack_settings(environ: Mapping[str, str] | None = None) -> StackSettings:
    """Defaults < ~/.config/kod/desktop.toml < KOD_DESKTOP_*."""
    return load_settings(StackSettings, config_home() / "kod/desktop.toml", env_prefix=ENV_PREFIX, environ=environ)


@dataclass(frozen=True)
class Stack:
    """Where the running stack is; what tests and the CLI need to talk to it."""

    settings: StackSettings
    root: Path
    cluster: handle_mod.ClusterHandle

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def interlink_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.interlink_port}"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.sidecar_port}"

    @property
    def interlink_token_file(self) -> Path:
        return self.config_dir / "interlink.token"

    @property
    def sidecar_token_file(self) -> Path:
        return self.config_dir / "docker-sidecar.token"

    @property
    def vk_bootstrap_kubeconfig(self) -> Path:
        return self.config_dir / "vk-bootstrap.kubeconfig"

    @property
    def vk_pki_dir(self) -> Path:
        return self.root / "vk-pki"

    @property
    def cluster_ca_file(self) -> Path:
        """The cluster CA (from the bootstrap kubeconfig): what the tunnel verifies its server with."""
        return self.config_dir / "cluster-ca.crt"

    @property
    def vk_client_file(self) -> Path:
        """vk_bridge's client key and certificate, one PEM file (system:node:<node>)."""
        return self.vk_pki_dir / "kubelet-client-current.pem"

    @property
    def vk_node_kubeconfig(self) -> Path:
        """The kubeconfig vk_bridge writes beside its client certificate (system:node:<node>)."""
        return self.vk_pki_dir / "kubeconfig"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def token(self, name: str) -> str:
        """The bearer token of 'interlink' or 'sidecar' (for tests of the REST APIs)."""
        path = self.interlink_token_file if name == "interlink" else self.sidecar_token_file
        return path.read_text().strip()


def processes(settings: StackSettings) -> tuple[str, ...]:
    """The stack's processes in start order: the three, and the tunnel when it has a server."""
    return (*NAMES, TUNNEL) if settings.konnectivity_server else NAMES


def stack_for(cluster: handle_mod.ClusterHandle | None = None, settings: StackSettings | None = None) -> Stack:
    """The stack's description (nothing is started)."""
    env_settings = localenv_settings.load()
    cluster = cluster or handle_mod.local(env_settings)
    settings = settings or load_stack_settings()
    return Stack(settings=settings, root=env_settings.data_dir / settings.directory, cluster=cluster)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def ensure_token(path: Path) -> bool:
    """A random bearer token in `path` (0600), made once; True when made now."""
    if path.exists() and path.read_text().strip():
        os.chmod(path, 0o600)
        return False
    write_private(path, secrets.token_urlsafe(32) + "\n")
    return True


#: cloudify's port-forward listeners for viewers in containers (cloudify's forward_ports), which
#: the pods' network lets through to this host (each accepts only its own viewer's address).
CLOUDIFY_FORWARD_PORTS = "39400-39499"


def api_server_port(kubeconfig: Path) -> int:
    """The port of the cluster's API server (its kubeconfig's current cluster), 443 by default."""
    import urllib.parse

    import yaml

    try:
        doc = yaml.safe_load(kubeconfig.read_text()) or {}
        server = (doc.get("clusters") or [{}])[0].get("cluster", {}).get("server", "")
    except (OSError, yaml.YAMLError, AttributeError, IndexError):
        return 443
    return urllib.parse.urlsplit(server).port or 443


def network_config(stack: Stack) -> dict[str, Any]:
    """The pods' network of the desktop's sidecar: its host rules are required (localenv runs it
    as root on the host), and pods reach of this desktop only the cluster's API server (which
    runs on this machine here) and cloudify's port-forward range."""
    return {
        "host_rules": "on",
        "host_allow": [f"tcp/{api_server_port(stack.cluster.kubeconfig)}", f"tcp/{CLOUDIFY_FORWARD_PORTS}"],
    }


def configs(stack: Stack, *, node_address: str | None = None) -> dict[str, dict[str, Any]]:
    """Each process's settings, as data (see interlink/settings.py, sidecars/docker/settings.py,
    vk_bridge/settings.py for every field). `node_address`: the node's InternalIP, fixed (what
    the tunnel announces must be what vk_bridge registers); default vk_bridge's own choice."""
    s = stack.settings
    node: dict[str, Any] = {"name": s.node_name, "user": s.user, "capacity": {"pods": str(s.max_pods)}}
    if node_address:
        node["address"] = node_address
    sidecar: dict[str, Any] = {
        **({"docker_url": s.docker_url} if s.docker_url else {}),
        "name": s.sidecar_name,
        "token_file": stack.sidecar_token_file,
        "create_token": False,
        "log_level": s.log_level,
        "listen": {"host": "127.0.0.1", "port": s.sidecar_port},
    }
    if s.sidecar_kind == "slurm":
        # Job directories outside root's 0700 home: jobs run as the pods' users (docs/slurm.md).
        sidecar |= {"capacity_pods": s.max_pods, "work_dir": f"/var/lib/kod-slurm/{s.sidecar_name}", **s.slurm}
    else:
        sidecar |= {"capacity": {"pods": s.max_pods}, "network": network_config(stack)}
    return {
        "sidecar": sidecar,
        "interlink": {
            "token_file": stack.interlink_token_file,
            "create_token": False,
            "log_level": s.log_level,
            "listen": {"host": s.interlink_host, "port": s.interlink_port},
            "sidecars": [{"name": s.sidecar_kind, "url": stack.sidecar_url, "token_file": str(stack.sidecar_token_file)}],
        },
        "vk": {
            "log_level": s.log_level,
            "node": node,
            "identity": {"bootstrap_kubeconfig": stack.vk_bootstrap_kubeconfig, "cert_dir": stack.vk_pki_dir, **s.vk_identity},
            "interlink": {"url": stack.interlink_url, "token_file": stack.interlink_token_file},
            "kubelet_api": {"port": s.kubelet_port, "cert_dir": stack.vk_pki_dir},
            "admission": {"owner_namespace": s.owner_namespace, "allow": list(s.admission_allow)},
        },
    }


def config_file(stack: Stack, name: str) -> Path:
    return stack.config_dir / f"{name}.toml"


def _command(name: str, script: str | None = None) -> tuple[str, ...]:
    """The console script of this virtualenv, with its interpreter spelled out: that is the
    command line /proc shows for it, which is how localenv.procs recognises its processes."""
    script = script or SCRIPTS[name]
    path = Path(sys.executable).parent / script
    if not path.exists():
        raise errors.Unavailable(
            f"{script} is not installed in {path.parent}",
            hint="run `make venv` (pip install -e .) so that the console scripts exist",
        )
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    interpreter = first[2:].strip().split() if first.startswith("#!") else []
    return (*interpreter, str(path))


# --------------------------------------------------------------------------------------------
# Cluster side
# --------------------------------------------------------------------------------------------


#: What earlier versions applied: a cluster-wide role that could read every Secret and mint tokens
#: for every ServiceAccount, for a kod-vk ServiceAccount whose tokens desktops used.
LEGACY_OBJECTS = (
    ("clusterrolebinding", "kod-virtual-kubelet", None),
    ("clusterrole", "kod-virtual-kubelet", None),
    ("rolebinding", "kod-virtual-kubelet-lease", "kube-node-lease"),
    ("role", "kod-virtual-kubelet-lease", "kube-node-lease"),
)


def apply_rbac(stack: Stack) -> str:
    """`kubectl apply -k kustomizations/` with the cluster's admin credentials, and removal of
    the cluster-wide role of earlier versions (and of their ServiceAccount token kubeconfig)."""
    if not (KUSTOMIZATION / "kustomization.yaml").exists():
        raise errors.Unavailable(f"{KUSTOMIZATION} is missing", hint="run from a checkout of the project")
    out = stack.cluster.kubectl("apply", "-k", str(KUSTOMIZATION)).stdout
    changed = [line for line in out.splitlines() if not line.endswith("unchanged")]
    removed = 0
    for kind, name, namespace in LEGACY_OBJECTS:
        ns = ["-n", namespace] if namespace else []
        proc = stack.cluster.kubectl("delete", kind, name, *ns, "--ignore-not-found", check=False)
        removed += bool(proc.stdout.strip())
    # The old ServiceAccount (its tokens die with it); the in-cluster overlay's has no token.
    sa = stack.cluster.kubectl("get", "serviceaccount", "kod-vk", "-n", NAMESPACE, "-o", "json", check=False)
    if sa.returncode == 0 and json.loads(sa.stdout).get("automountServiceAccountToken") is not False:
        stack.cluster.kubectl("delete", "serviceaccount", "kod-vk", "-n", NAMESPACE, "--ignore-not-found")
        removed += 1
    (stack.config_dir / "vk.kubeconfig").unlink(missing_ok=True)
    summary = f"{len(changed)} changed" if changed else "unchanged"
    return summary + (f", {removed} objects of the old cluster-wide role removed" if removed else "")


def ensure_bootstrap_kubeconfig(stack: Stack) -> str:
    """vk_bridge's bootstrap kubeconfig (0600): server and CA, and a bootstrap token unless the
    client certificate vk_bridge already has still works (asked of the API server)."""
    user = node_join.whoami(stack.cluster.kubectl_path, stack.vk_node_kubeconfig)
    token = node_join.kubeconfig_token(stack.vk_bootstrap_kubeconfig)
    if user == node_join.node_user(stack.node_name):
        node_join.write_bootstrap_kubeconfig(stack.vk_bootstrap_kubeconfig, stack.cluster, token)
        return f"vk_bridge's certificate is accepted as {user}: no bootstrap token needed"
    if token:
        expires = node_join.token_expiry(stack.cluster, token)
        if expires is not None and (expires - datetime.now(UTC)).total_seconds() > 600:
            node_join.write_bootstrap_kubeconfig(stack.vk_bootstrap_kubeconfig, stack.cluster, token)
            return f"bootstrap token still valid until {expires:%H:%M}Z"
    node_join.delete_bootstrap_tokens(stack.cluster, stack.node_name)
    token = node_join.create_bootstrap_token(stack.cluster, node_name=stack.node_name, minutes=stack.settings.bootstrap_token_minutes)
    node_join.write_bootstrap_kubeconfig(stack.vk_bootstrap_kubeconfig, stack.cluster, token)
    # The API server learns of new token Secrets through a watch: wait until it accepts this one,
    # so that vk_bridge's first request is not refused.
    deadline = time.monotonic() + 30
    while not (node_join.whoami(stack.cluster.kubectl_path, stack.vk_bootstrap_kubeconfig) or "").startswith("system:bootstrap:"):
        if time.monotonic() > deadline:
            raise errors.Unavailable("the API server does not accept the new bootstrap token",
                                     hint="is --enable-bootstrap-token-auth set on the API server? (docs/security.md)")
        time.sleep(0.2)
    return f"new bootstrap token {token.split('.')[0]}, valid {stack.settings.bootstrap_token_minutes} min"


def retire_bootstrap_token(stack: Stack) -> str:
    """Delete this node's bootstrap tokens once vk_bridge's own certificate works."""
    if node_join.whoami(stack.cluster.kubectl_path, stack.vk_node_kubeconfig) != node_join.node_user(stack.node_name):
        return "kept: vk_bridge has no working certificate yet"
    count = node_join.delete_bootstrap_tokens(stack.cluster, stack.node_name)
    return "used, deleted" if count else "none left"


def retire_certificate_the_tunnel_refuses(stack: Stack) -> str:
    """A desktop that dials the tunnel needs a node certificate of the nodes' own client CA (the
    only one the tunnel server takes, localenv.pki): one issued before that CA existed (from the
    cluster CA) is removed while vk_bridge is stopped, so that it joins again with a bootstrap
    token. Only for the local cluster, whose CA files are on this machine; a running vk_bridge is
    left alone (stop the stack first, and it re-joins at its next start)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from localenv.paths import paths_for

    node_ca = paths_for(localenv_settings.load()).node_client_ca_cert
    if not node_ca.exists() or not stack.vk_client_file.exists():
        return "nothing to check"
    try:
        cert = x509.load_pem_x509_certificate(stack.vk_client_file.read_bytes())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(node_ca.read_bytes()))
        return "issued by the nodes' client CA"
    except (ValueError, TypeError, InvalidSignature) as exc:
        reason = str(exc) or type(exc).__name__
    if pid("vk", stack) is not None:
        return f"not issued by the nodes' client CA ({reason}), but vk_bridge runs: kept"
    for path in (stack.vk_client_file, stack.vk_node_kubeconfig):
        path.unlink(missing_ok=True)
    return f"not issued by the nodes' client CA ({reason}): removed, vk_bridge joins again"


def approve_vk_csrs(stack: Stack, *, hostnames: set[str] | None = None, ips: set[str] | None = None) -> list[str]:
    """Approve the pending kubelet-serving CSRs vk_bridge made for this node, after checking them
    (localenv.node_join.serving_csr_problem: requester system:node:<node>, subject, usages, key,
    SANs only this machine's addresses, `ips`, and names, `hostnames`); deny the others that claim
    this node. Returns the approved names."""
    hostnames = hostnames if hostnames is not None else {socket.gethostname(), stack.node_name}
    ips = ips if ips is not None else node_join.local_addresses()
    approved, _denied = node_join.approve_serving_csrs(stack.cluster, stack.node_name, hostnames=hostnames, ips=ips)
    return approved


def node_state(stack: Stack) -> dict[str, Any] | None:
    """The node's Ready condition and its Lease's renewTime, or None when not registered."""
    proc = stack.cluster.kubectl("get", "node", stack.node_name, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    node = json.loads(proc.stdout)
    ready: dict[str, Any] = next((c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), {})
    lease = stack.cluster.kubectl("get", "lease", stack.node_name, "-n", "kube-node-lease", "-o", "json", check=False)
    renew = json.loads(lease.stdout).get("spec", {}).get("renewTime") if lease.returncode == 0 else None
    return {"ready": ready.get("status") == "True", "reason": ready.get("reason"), "message": ready.get("message"),
            "renew_time": renew}


def _rfc3339(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _ping(url: str, token_file: Path) -> bool:
    request = urllib.request.Request(f"{url}/v1/ping", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def node_address(stack: Stack) -> str:
    """This machine's address on the route towards the API server (what vk_bridge registers as
    the node's InternalIP: nothing is sent, a UDP connect only routes)."""
    server = urllib.parse.urlparse(node_join.cluster_entry(stack.cluster)["server"])
    host, port = server.hostname or "127.0.0.1", server.port or 443
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


def write_cluster_ca(stack: Stack) -> Path:
    """The cluster CA the bootstrap kubeconfig names, as a PEM file (0600) for the tunnel."""
    entry = node_join.cluster_entry(stack.cluster)
    if "certificate-authority-data" in entry:
        pem = base64.b64decode(entry["certificate-authority-data"])
    else:
        pem = Path(entry["certificate-authority"]).expanduser().read_bytes()
    write_private(stack.cluster_ca_file, pem, unchanged_ok=True)
    return stack.cluster_ca_file


def tunnel_daemon(stack: Stack) -> procs.Daemon:
    """The konnectivity agent: dials the cluster's server as this node, for this node's address."""
    s = stack.settings
    assert s.konnectivity_server, "tunnel_daemon needs konnectivity_server"
    host, _, port = s.konnectivity_server.rpartition(":")
    if not host or not port.isdigit():
        raise errors.InvalidInput(f"konnectivity_server {s.konnectivity_server!r} is not HOST:PORT")
    env_settings = localenv_settings.load()
    return konnectivity.agent_daemon(konnectivity.AgentSpec(
        name=SCRIPTS[TUNNEL], server_host=host.strip("[]"), server_port=int(port), ca_cert=stack.cluster_ca_file,
        cert_file=stack.vk_client_file, key_file=stack.vk_client_file, addresses=(node_address(stack),),
        hostnames=(s.node_name,), health_port=s.tunnel_health_port, admin_port=s.tunnel_admin_port,
        cache_dir=env_settings.cache_dir.expanduser(), run_dir=stack.run_dir, logs_dir=stack.logs_dir,
        ready_timeout=s.ready_timeout,
    ))


def daemon(stack: Stack, name: str) -> procs.Daemon:
    """The process `name` ('sidecar', 'interlink', 'vk' or 'tunnel') as a localenv daemon."""
    if name == TUNNEL:
        return tunnel_daemon(stack)
    cfg = config_file(stack, name)
    argv = (*_command(name, SIDECAR_SCRIPTS[stack.settings.sidecar_kind] if name == "sidecar" else None), "--config", str(cfg))
    address = node_address(stack) if name == "vk" and stack.settings.konnectivity_server else None
    files = {cfg: toml.dumps(configs(stack, node_address=address)[name])}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "sidecar":
        return procs.Daemon(
            name=_pid_file(stack, name).stem, argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env, code=CODE,
            inputs=(stack.sidecar_token_file,), ready=lambda: _ping(stack.sidecar_url, stack.sidecar_token_file),
            ready_timeout=stack.settings.ready_timeout, stop_timeout=30.0,
        )
    if name == "interlink":
        return procs.Daemon(
            name="interlink", argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env, code=CODE,
            inputs=(stack.interlink_token_file, stack.sidecar_token_file),
            ready=lambda: _ping(stack.interlink_url, stack.interlink_token_file),
            ready_timeout=stack.settings.ready_timeout, stop_timeout=10.0,
        )
    if name == "vk":
        pid_file = stack.run_dir / "vk.pid"

        def vk_ready() -> bool:
            # vk_bridge waits for its serving certificate before it registers the node: approving
            # its CSR is part of bringing it up. Ready means: node Ready, Lease renewed by the
            # process that runs now (its record, read now: a restart replaces it before this runs).
            record = procs.read_record(pid_file)
            since = record.started_at if record else time.time()
            approve_vk_csrs(stack)
            state = node_state(stack)
            return bool(state and state["ready"] and state["renew_time"] and _rfc3339(state["renew_time"]) >= since - 1)

        return procs.Daemon(
            name="vk", argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env, code=CODE,
            inputs=(stack.interlink_token_file, stack.vk_bootstrap_kubeconfig), ready=vk_ready,
            ready_timeout=stack.settings.ready_timeout, stop_timeout=15.0,
        )
    raise errors.InvalidInput(f"unknown desktop stack process {name!r}; one of {', '.join(NAMES)}")


def _pid_file(stack: Stack, name: str) -> Path:
    sidecar = f"{stack.settings.sidecar_kind}-sidecar"
    return stack.run_dir / f"{ {'sidecar': sidecar, TUNNEL: SCRIPTS[TUNNEL]}.get(name, name)}.pid"


def pid(name: str, stack: Stack | None = None) -> int | None:
    """The PID of a running process of the stack (verified by its command line), or None."""
    return procs.running_pid(_pid_file(stack or stack_for(), name))


def kill(name: str, sig: int = signal.SIGKILL, stack: Stack | None = None, *, timeout: float = 30.0) -> int | None:
    """Send `sig` to one of the stack's processes (by its PID file, verified) and wait until it
    is gone; returns the PID. For tests: SIGKILL is a crash, SIGTERM a clean stop."""
    stack = stack or stack_for()
    record = procs.read_record(_pid_file(stack, name))
    if record is None or not procs.is_alive(record):
        return None
    os.kill(record.pid, sig)
    deadline = time.monotonic() + timeout
    while procs.is_alive(record):
        procs._reap(record.pid)
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"{SCRIPTS[name]} (pid {record.pid}) still runs {timeout:.0f} s after signal {sig}")
        time.sleep(0.02)
    return record.pid


@contextlib.contextmanager
def _locked(stack: Stack) -> Iterator[None]:
    """One `up`/`start`/`down` of a stack at a time, across processes (test sessions and the CLI
    may share the machine): two callers must never both start a vk_bridge for one node."""
    stack.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(stack.root / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(name: str, stack: Stack | None = None) -> tuple[procs.Outcome, int]:
    """Start one process (if it does not run) and wait until it is ready."""
    stack = stack or stack_for()
    with _locked(stack):
        return procs.ensure(daemon(stack, name))


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------


def up(progress: Progress | None = None, *, cluster: handle_mod.ClusterHandle | None = None,
       settings: StackSettings | None = None, with_vk: bool = True) -> Stack:
    """Bring the desktop stack up (idempotent) and return where it is. The cluster must run
    (`python -m localenv up`). `with_vk=False` starts only the sidecar and interlink, for a
    vk_bridge that runs elsewhere (in the cluster: kustomizations/in-cluster)."""
    progress = progress or Progress()
    stack = stack_for(cluster, settings)
    if not handle_mod.reachable(stack.cluster.kubeconfig, stack.cluster.kubectl_path):
        raise errors.Unavailable("the cluster does not answer", hint="run `python -m localenv up` first")
    for path in (stack.config_dir, stack.run_dir, stack.logs_dir):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(stack.config_dir, 0o700)
    with _locked(stack):
        _up(stack, progress, processes(stack.settings) if with_vk else NAMES[:2])
    if with_vk:
        progress.line(f"    virtual node {stack.node_name} is Ready")
    return stack


def _up(stack: Stack, progress: Progress, names: tuple[str, ...]) -> None:
    with progress.step("desktop stack: tokens") as step:
        made = [p.name for p in (stack.interlink_token_file, stack.sidecar_token_file) if ensure_token(p)]
        step.done(f"made {', '.join(made)} (0600)" if made else "present")
    with progress.step("desktop stack: namespace, node bootstrap RBAC, admission policy, user role (kustomizations/)") as step:
        step.done(apply_rbac(stack))
    if "vk" in names and TUNNEL in names:
        with progress.step("desktop stack: vk_bridge's certificate, for the tunnel") as step:
            step.done(retire_certificate_the_tunnel_refuses(stack))
    if "vk" in names:
        with progress.step("desktop stack: vk_bridge's bootstrap kubeconfig") as step:
            step.done(ensure_bootstrap_kubeconfig(stack))
    if TUNNEL in names:
        write_cluster_ca(stack)
    with progress.step(f"desktop stack: user {stack.settings.user} and the registry of virtual nodes") as step:
        owner = users.ensure(stack.cluster, stack.settings.user)
        registered = node_registry.register(stack.cluster, stack.node_name, stack.settings.allowed)
        step.done(f"namespace {owner.namespace}, kubeconfig {owner.kubeconfig or 'the cluster given'}; {registered}")
    for name in names:
        script = SIDECAR_SCRIPTS[stack.settings.sidecar_kind] if name == "sidecar" else SCRIPTS[name]
        with progress.step(f"desktop stack: {script}") as step:
            outcome, pid_ = procs.ensure(daemon(stack, name))
            step.done(f"{outcome}, pid {pid_}, log {stack.logs_dir / _pid_file(stack, name).with_suffix('.log').name}")
    if "vk" in names:
        with progress.step("desktop stack: bootstrap token") as step:
            step.done(retire_bootstrap_token(stack))


def down(progress: Progress | None = None, *, cluster: handle_mod.ClusterHandle | None = None,
         settings: StackSettings | None = None, delete_node: bool = True, pod_timeout: float = 60.0) -> None:
    """Delete the pods on the virtual node (so their containers go), stop the three processes
    (by PID), and remove the Node object."""
    progress = progress or Progress()
    stack = stack_for(cluster, settings)
    with _locked(stack):
        _down(stack, progress, delete_node=delete_node, pod_timeout=pod_timeout)


def _down(stack: Stack, progress: Progress, *, delete_node: bool, pod_timeout: float) -> None:
    reachable = handle_mod.reachable(stack.cluster.kubeconfig, stack.cluster.kubectl_path)
    if reachable and pid("vk", stack) is not None:
        with progress.step(f"desktop stack: pods on {stack.node_name}") as step:
            step.done(_delete_node_pods(stack, pod_timeout))
    # The tunnel too when it runs from an earlier configuration that had one.
    running_tunnel = (TUNNEL,) if _pid_file(stack, TUNNEL).exists() and TUNNEL not in processes(stack.settings) else ()
    for name in reversed((*processes(stack.settings), *running_tunnel)):
        script = SIDECAR_SCRIPTS[stack.settings.sidecar_kind] if name == "sidecar" else SCRIPTS[name]
        with progress.step(f"desktop stack: stop {script}") as step:
            stopped = procs.stop_by_pid_file(_pid_file(stack, name))
            step.done(f"stopped pid {stopped}" if stopped else "not running")
    if reachable and delete_node:
        with progress.step(f"desktop stack: node {stack.node_name}") as step:
            proc = stack.cluster.kubectl("delete", "node", stack.node_name, "--ignore-not-found", "--wait=false", check=False)
            node_join.delete_bootstrap_tokens(stack.cluster, stack.node_name)
            step.done((proc.stdout.strip() or "not registered") + "; registry: " + node_registry.unregister(stack.cluster, stack.node_name))


def _delete_node_pods(stack: Stack, timeout: float) -> str:
    selector = f"spec.nodeName={stack.node_name}"
    listing = stack.cluster.kubectl_json("get", "pods", "-A", "--field-selector", selector)
    count = len(listing.get("items", []))
    if not count:
        return "none"
    stack.cluster.kubectl("delete", "pods", "-A", "--field-selector", selector, "--wait=false", "--grace-period=5")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not stack.cluster.kubectl_json("get", "pods", "-A", "--field-selector", selector).get("items"):
            return f"{count} deleted"
        time.sleep(0.5)
    return f"{count} asked to stop; some still terminating after {timeout:.0f} s"


def status(*, cluster: handle_mod.ClusterHandle | None = None, settings: StackSettings | None = None) -> dict[str, Any]:
    """What runs: each process's PID (or None), the node's state, the paths."""
    stack = stack_for(cluster, settings)
    node = None
    if handle_mod.reachable(stack.cluster.kubeconfig, stack.cluster.kubectl_path):
        node = node_state(stack)
    return {
        "node_name": stack.node_name,
        "processes": {name: pid(name, stack) for name in processes(stack.settings)},
        "node": node,
        "interlink_url": stack.interlink_url,
        "sidecar_url": stack.sidecar_url,
        "logs_dir": str(stack.logs_dir),
        "config_dir": str(stack.config_dir),
    }

