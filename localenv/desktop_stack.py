"""The desktop side of the virtual node: the Docker sidecar, interlink and vk_bridge, as background
processes of this machine, registered as a node of the cluster.

    from localenv import desktop_stack
    stack = desktop_stack.up(progress)     # idempotent: what already runs is left alone
    stack.node_name                        # "desktop-<hostname>", Ready
    desktop_stack.kill("vk", signal.SIGKILL); desktop_stack.start("vk")   # tests
    desktop_stack.status(); desktop_stack.down(progress)

What `up` does, in order:

1. random bearer tokens for interlink and the sidecar (files 0600, made once, never logged);
2. `kubectl apply -k kustomizations/` (namespace kod-system, ServiceAccount kod-vk and its
   least-privilege RBAC) with the admin kubeconfig, then a kubeconfig for vk_bridge holding a
   token of that ServiceAccount from the TokenRequest API (renewed when it nears expiry);
3. one TOML config per process (0600), built as data;
4. starts `kod-docker-sidecar`, `kod-interlink` and `kod-vk` (console scripts of this virtualenv)
   by PID with their logs under `~/.local/share/kod/desktop/logs/`, each waited for: the two
   services answer /v1/ping; vk_bridge's kubelet-serving CSR is approved (it is checked to be
   vk_bridge's, for its own node) and the node is Ready with a fresh Lease.

Everything lives under `<data_dir>/desktop/` (`data_dir` from localenv's settings). Settings:
`KOD_DESKTOP_*` variables or `~/.config/kod/desktop.toml` (`StackSettings`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

from kod import errors
from kod.settings import config_home, load_settings
from localenv import handle as handle_mod
from localenv import procs
from localenv import settings as localenv_settings
from localenv.progress import Progress

ENV_PREFIX = "KOD_DESKTOP_"
NAMESPACE = "kod-system"
SERVICE_ACCOUNT = "kod-vk"
VK_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving"
#: The three processes, in start order (stop order is the reverse).
NAMES = ("sidecar", "interlink", "vk")
SCRIPTS = {"sidecar": "kod-docker-sidecar", "interlink": "kod-interlink", "vk": "kod-vk"}
REPO = Path(__file__).resolve().parents[1]
KUSTOMIZATION = REPO / "kustomizations"


def default_node_name(hostname: str | None = None) -> str:
    """`desktop-<hostname>`: the same rule as vk_bridge.settings.default_node_name (a test checks
    that they agree; localenv may not import vk_bridge)."""
    host = (hostname or socket.gethostname()).lower()
    host = re.sub(r"[^a-z0-9.-]+", "-", host).strip("-.") or "localhost"
    return f"desktop-{host}"[:253].rstrip("-.")


class StackSettings(BaseModel):
    """How the desktop stack is set up. Ports are on 127.0.0.1 except the kubelet API's, which
    the API server must reach at the node's address."""

    model_config = ConfigDict(extra="forbid")

    node_name: str = Field(default_factory=default_node_name, description="The virtual node's name.")
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
    token_hours: int = Field(default=720, ge=1, description="Lifetime of vk_bridge's ServiceAccount token.")
    ready_timeout: float = Field(default=120.0, gt=0, description="Seconds each process gets to become ready.")
    log_level: str = Field(default="info", description="Log level of the three processes.")
    sidecar_name: str = Field(
        default="docker", description="The Docker sidecar's name; it labels its Docker objects, so two stacks on "
        "one engine never touch each other's containers.",
    )
    directory: str = Field(default="desktop", description="The stack's directory under localenv's data_dir.")

    def private(self, suffix: str, port_offset: int, kubelet_port_offset: int = 0, **update: Any) -> StackSettings:
        """A second stack next to this one (for tests and benchmarks that kill or load its
        processes): node, sidecar and directory named `<name>-<suffix>`, interlink's and the
        sidecar's ports moved by `port_offset` and the kubelet API's by `kubelet_port_offset`;
        `update` sets other fields."""
        return self.model_copy(update={
            "node_name": f"{self.node_name}-{suffix}", "interlink_port": self.interlink_port + port_offset,
            "sidecar_port": self.sidecar_port + port_offset, "kubelet_port": self.kubelet_port + kubelet_port_offset,
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
    def vk_kubeconfig(self) -> Path:
        return self.config_dir / "vk.kubeconfig"

    @property
    def vk_pki_dir(self) -> Path:
        return self.root / "vk-pki"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def token(self, name: str) -> str:
        """The bearer token of 'interlink' or 'sidecar' (for tests of the REST APIs)."""
        path = self.interlink_token_file if name == "interlink" else self.sidecar_token_file
        return path.read_text().strip()


def stack_for(cluster: handle_mod.ClusterHandle | None = None, settings: StackSettings | None = None) -> Stack:
    """The stack's description (nothing is started)."""
    env_settings = localenv_settings.load()
    cluster = cluster or handle_mod.local(env_settings)
    settings = settings or load_stack_settings()
    return Stack(settings=settings, root=env_settings.data_dir / settings.directory, cluster=cluster)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _write_private(path: Path, content: str) -> bool:
    """Write a 0600 file unless it already holds `content`; True when written."""
    if path.exists() and path.read_text() == content:
        os.chmod(path, 0o600)
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    tmp.replace(path)
    return True


def ensure_token(path: Path) -> bool:
    """A random bearer token in `path` (0600), made once; True when made now."""
    if path.exists() and path.read_text().strip():
        os.chmod(path, 0o600)
        return False
    _write_private(path, secrets.token_urlsafe(32) + "\n")
    return True


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML from nested dicts: scalars and lists first, one [table] per nested dict; dicts in
    lists become inline tables."""
    lines: list[str] = []

    def table(prefix: list[str], d: Mapping[str, Any]) -> None:
        flat = [(k, v) for k, v in d.items() if not isinstance(v, Mapping) and v is not None]
        nested = [(k, v) for k, v in d.items() if isinstance(v, Mapping)]
        if prefix:
            lines.append(f"\n[{'.'.join(prefix)}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in flat)
        for k, v in nested:
            table([*prefix, k], v)

    table([], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def configs(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each process's settings, as data (see interlink/settings.py, sidecars/docker/settings.py,
    vk_bridge/settings.py for every field)."""
    s = stack.settings
    return {
        "sidecar": {
            "name": s.sidecar_name,
            "token_file": stack.sidecar_token_file,
            "create_token": False,
            "log_level": s.log_level,
            "listen": {"host": "127.0.0.1", "port": s.sidecar_port},
            "capacity": {"pods": s.max_pods},
        },
        "interlink": {
            "token_file": stack.interlink_token_file,
            "create_token": False,
            "log_level": s.log_level,
            "listen": {"host": s.interlink_host, "port": s.interlink_port},
            "sidecars": [{"name": "docker", "url": stack.sidecar_url, "token_file": str(stack.sidecar_token_file)}],
        },
        "vk": {
            "log_level": s.log_level,
            "node": {"name": s.node_name, "user": s.user, "capacity": {"pods": str(s.max_pods)}},
            "kube": {"kubeconfig": stack.vk_kubeconfig},
            "interlink": {"url": stack.interlink_url, "token_file": stack.interlink_token_file},
            "kubelet_api": {"port": s.kubelet_port, "cert_dir": stack.vk_pki_dir},
        },
    }


def config_file(stack: Stack, name: str) -> Path:
    return stack.config_dir / f"{name}.toml"


def _command(name: str) -> tuple[str, ...]:
    """The console script of this virtualenv, with its interpreter spelled out: that is the
    command line /proc shows for it, which is how localenv.procs recognises its processes."""
    path = Path(sys.executable).parent / SCRIPTS[name]
    if not path.exists():
        raise errors.Unavailable(
            f"{SCRIPTS[name]} is not installed in {path.parent}",
            hint="run `make venv` (pip install -e .) so that the console scripts exist",
        )
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    interpreter = first[2:].strip().split() if first.startswith("#!") else []
    return (*interpreter, str(path))


# --------------------------------------------------------------------------------------------
# Cluster side
# --------------------------------------------------------------------------------------------


def apply_rbac(stack: Stack) -> str:
    """`kubectl apply -k kustomizations/` with the cluster's admin credentials."""
    if not (KUSTOMIZATION / "kustomization.yaml").exists():
        raise errors.Unavailable(f"{KUSTOMIZATION} is missing", hint="run from a checkout of the project")
    out = stack.cluster.kubectl("apply", "-k", str(KUSTOMIZATION)).stdout
    changed = [line for line in out.splitlines() if not line.endswith("unchanged")]
    return f"{len(changed)} changed" if changed else "unchanged"


def _jwt_expiry(token: str) -> float:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(data.get("exp", 0))
    except (IndexError, ValueError):
        return 0.0


def _current_token(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text())
        token = config["users"][0]["user"]["token"]
        return str(token)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def ensure_vk_kubeconfig(stack: Stack) -> str:
    """A kubeconfig for vk_bridge with a ServiceAccount token (TokenRequest API), renewed when a
    quarter of its lifetime is left."""
    token = _current_token(stack.vk_kubeconfig)
    if token and _jwt_expiry(token) - time.time() > stack.settings.token_hours * 3600 / 4:
        # A re-created cluster no longer accepts it: ask the API server, not only the clock.
        check = stack.cluster.kubectl(f"--kubeconfig={stack.vk_kubeconfig}", "auth", "can-i", "patch", "nodes/status", check=False)
        if check.returncode == 0 and check.stdout.strip() == "yes":
            return "token still valid"
    admin = json.loads(stack.cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin["clusters"][0]["cluster"]
    token = stack.cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={stack.settings.token_hours}h"
    ).stdout.strip()
    server_entry = {k: v for k, v in cluster.items() if k in ("server", "certificate-authority-data", "certificate-authority")}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kod", "cluster": server_entry}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": f"{SERVICE_ACCOUNT}@kod", "context": {"cluster": "kod", "user": SERVICE_ACCOUNT}}],
        "current-context": f"{SERVICE_ACCOUNT}@kod",
    }
    _write_private(stack.vk_kubeconfig, json.dumps(config, indent=2) + "\n")
    return f"new token, valid {stack.settings.token_hours} h"


def approve_vk_csrs(stack: Stack) -> list[str]:
    """Approve the pending kubelet-serving CSRs that vk_bridge made for this node (and only
    those: requester, signer and subject are checked). Returns the approved names."""
    listing = stack.cluster.kubectl_json("get", "csr")
    approved = []
    for csr in listing.get("items", []):
        spec, status = csr.get("spec", {}), csr.get("status", {})
        if status.get("conditions") or spec.get("signerName") != KUBELET_SERVING_SIGNER or spec.get("username") != VK_USER:
            continue
        try:
            request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
            cn = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        except (KeyError, ValueError, IndexError):
            continue
        if cn != f"system:node:{stack.node_name}":
            continue
        name = csr["metadata"]["name"]
        stack.cluster.kubectl("certificate", "approve", name)
        approved.append(name)
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


def daemon(stack: Stack, name: str) -> procs.Daemon:
    """The process `name` ('sidecar', 'interlink' or 'vk') as a localenv daemon."""
    cfg = config_file(stack, name)
    argv = (*_command(name), "--config", str(cfg))
    files = {cfg: to_toml(configs(stack)[name])}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "sidecar":
        return procs.Daemon(
            name="docker-sidecar", argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env,
            inputs=(stack.sidecar_token_file,), ready=lambda: _ping(stack.sidecar_url, stack.sidecar_token_file),
            ready_timeout=stack.settings.ready_timeout, stop_timeout=30.0,
        )
    if name == "interlink":
        return procs.Daemon(
            name="interlink", argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env,
            inputs=(stack.interlink_token_file, stack.sidecar_token_file),
            ready=lambda: _ping(stack.interlink_url, stack.interlink_token_file),
            ready_timeout=stack.settings.ready_timeout, stop_timeout=10.0,
        )
    if name == "vk":
        pid_file = stack.run_dir / "vk.pid"
        record = procs.read_record(pid_file)
        since = record.started_at if record and procs.is_alive(record) else time.time()

        def vk_ready() -> bool:
            # vk_bridge waits for its serving certificate before it registers the node: approving
            # its CSR is part of bringing it up. Ready means: node Ready, Lease renewed by this process.
            approve_vk_csrs(stack)
            state = node_state(stack)
            return bool(state and state["ready"] and state["renew_time"] and _rfc3339(state["renew_time"]) >= since - 1)

        return procs.Daemon(
            name="vk", argv=argv, run_dir=stack.run_dir, logs_dir=stack.logs_dir, files=files, env=env,
            inputs=(stack.interlink_token_file, stack.vk_kubeconfig), ready=vk_ready,
            ready_timeout=stack.settings.ready_timeout, stop_timeout=15.0,
        )
    raise errors.InvalidInput(f"unknown desktop stack process {name!r}; one of {', '.join(NAMES)}")


def _pid_file(stack: Stack, name: str) -> Path:
    return stack.run_dir / f"{'docker-sidecar' if name == 'sidecar' else name}.pid"


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
        _up(stack, progress, NAMES if with_vk else NAMES[:2])
    if with_vk:
        progress.line(f"    virtual node {stack.node_name} is Ready")
    return stack


def _up(stack: Stack, progress: Progress, names: tuple[str, ...]) -> None:
    with progress.step("desktop stack: tokens") as step:
        made = [p.name for p in (stack.interlink_token_file, stack.sidecar_token_file) if ensure_token(p)]
        step.done(f"made {', '.join(made)} (0600)" if made else "present")
    with progress.step("desktop stack: namespace, ServiceAccount and RBAC (kustomizations/)") as step:
        step.done(apply_rbac(stack))
    with progress.step("desktop stack: vk_bridge's kubeconfig") as step:
        step.done(ensure_vk_kubeconfig(stack))
    for name in names:
        with progress.step(f"desktop stack: {SCRIPTS[name]}") as step:
            outcome, pid_ = procs.ensure(daemon(stack, name))
            step.done(f"{outcome}, pid {pid_}, log {stack.log_file('docker-sidecar' if name == 'sidecar' else name)}")


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
    for name in reversed(NAMES):
        with progress.step(f"desktop stack: stop {SCRIPTS[name]}") as step:
            stopped = procs.stop_by_pid_file(_pid_file(stack, name))
            step.done(f"stopped pid {stopped}" if stopped else "not running")
    if reachable and delete_node:
        with progress.step(f"desktop stack: node {stack.node_name}") as step:
            proc = stack.cluster.kubectl("delete", "node", stack.node_name, "--ignore-not-found", "--wait=false", check=False)
            step.done(proc.stdout.strip() or "not registered")


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
        "processes": {name: pid(name, stack) for name in NAMES},
        "node": node,
        "interlink_url": stack.interlink_url,
        "sidecar_url": stack.sidecar_url,
        "logs_dir": str(stack.logs_dir),
        "config_dir": str(stack.config_dir),
    }

