"""The Node object: registration and status.

`node_object` builds the Node as data; `NodeController` registers it (creating it, or bringing the
labels of an existing one up to date), then keeps its status current: Ready follows the provider's
ping, capacity comes from the ping or the settings, and the status is re-posted when it changes or
every `status_interval_seconds`.

What a node may write about itself is what NodeRestriction lets a kubelet write: labels outside
`kubernetes.io`/`k8s.io` (but the kubelet's own: hostname, os, arch, zone, region, instance type,
and the `kubelet.kubernetes.io`/`node.kubernetes.io` prefixes), never `node-restriction.kubernetes.io`;
taints only when the Node is created (a node may not change its own taints later: an admin puts
back a removed one). A Node of this name that is not this desktop's virtual node (no
`type=virtual-kubelet` label or not managed by kod-vk, or another user's desktop) is never taken
over: `check_ownership` refuses to start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from kod import errors, labels, quantity, wire
from kod.kube import KubeClient
from kod.log import get_logger
from vk_bridge.provider import NodeProvider
from vk_bridge.settings import NodeSettings
from vk_bridge.status import k8s_time

log = get_logger(__name__)

#: The kubelet's default pod capacity; a desktop can run more small pods, see settings.
DEFAULT_MAX_PODS = "110"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_capacity() -> dict[str, str]:
    """CPU and memory of this machine, when the provider does not say."""
    cap = {"cpu": str(os.cpu_count() or 1), "pods": DEFAULT_MAX_PODS}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    cap["memory"] = quantity.format_bytes(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    return cap


def detect_address(api_host: str) -> str:
    """The local address of the route towards the API server; when that is loopback (the API
    server is on this machine), the address of the default route, so that the node address is
    the machine's own, as a kubelet would report it. Nothing is sent: UDP connect only routes."""
    host = urlparse(api_host).hostname or "127.0.0.1"
    candidates = [host, "10.255.255.255", "192.0.2.1"]
    fallback = "127.0.0.1"
    for target in candidates:
        try:
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                addr = str(s.getsockname()[0])
        except OSError:
            continue
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
        fallback = addr
    return fallback


def node_info(kubelet_version: str, runtime_version: str) -> dict[str, str]:
    """status.nodeInfo as `kubectl get nodes -o wide` shows it."""
    os_image = "Linux"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_image = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    machine_id = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                machine_id = f.read().strip()
                break
        except OSError:
            continue
    return {
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "operatingSystem": "linux",
        "osImage": os_image,
        "kernelVersion": platform.release(),
        "kubeletVersion": kubelet_version,
        "kubeProxyVersion": "",
        "containerRuntimeVersion": runtime_version,
        "machineID": machine_id,
        "systemUUID": machine_id,
        "bootID": "",
    }


#: Labels of the kubernetes.io/k8s.io namespaces a kubelet may set on its own Node (NodeRestriction,
#: k8s.io/kubelet/pkg/apis: KubeletLabels and KubeletLabelNamespaces).
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", "beta.kubernetes.io/os", "beta.kubernetes.io/arch",
    "topology.kubernetes.io/zone", "topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region", "node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type",
})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
MANAGED_BY_ANNOTATION = "kod.io/managed-by"
MANAGED_BY = "kod-vk"


def _in_namespace(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def label_forbidden_to_nodes(key: str) -> bool:
    """True for a label NodeRestriction does not let a node set on itself."""
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if _in_namespace(namespace, "node-restriction.kubernetes.io"):
        return True
    if not any(_in_namespace(namespace, d) for d in ("kubernetes.io", "k8s.io")):
        return False
    return key not in KUBELET_LABELS and not any(_in_namespace(namespace, d) for d in KUBELET_LABEL_NAMESPACES)


def node_labels(settings: NodeSettings, arch: str) -> dict[str, str]:
    """The node's labels: what virtual kubelets and this project's selectors look for. No
    `kubernetes.io/role` or `node-role.kubernetes.io/*`: a node may not set those (an admin may).
    Raises InvalidInput for extra labels NodeRestriction would refuse."""
    out = {
        labels.NODE_TYPE: labels.VIRTUAL_KUBELET,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": settings.name,
        "node.kubernetes.io/exclude-from-external-load-balancers": "true",
    }
    if settings.user:
        out[labels.DESKTOP_OF] = settings.user
    forbidden = sorted(k for k in settings.labels if label_forbidden_to_nodes(k))
    if forbidden:
        raise errors.InvalidInput(
            f"node.labels {', '.join(forbidden)}: NodeRestriction does not let a node set these labels on itself",
            hint=f"drop them from node.labels; a cluster admin can set them: kubectl label node {settings.name} KEY=VALUE",
        )
    out.update(settings.labels)
    return out


def ownership_problem(node: Mapping[str, Any], settings: NodeSettings) -> str | None:
    """Why an existing Node of our name is not this desktop's virtual node, or None when it is."""
    meta = node.get("metadata") or {}
    have = meta.get("labels") or {}
    managed = (meta.get("annotations") or {}).get(MANAGED_BY_ANNOTATION)
    if have.get(labels.NODE_TYPE) != labels.VIRTUAL_KUBELET or managed != MANAGED_BY:
        return (f"a Node named {settings.name} already exists and is not a kod virtual node "
                f"(label {labels.NODE_TYPE}={have.get(labels.NODE_TYPE)!r}, annotation {MANAGED_BY_ANNOTATION}={managed!r})")
    owner = have.get(labels.DESKTOP_OF)
    if owner and settings.user and owner != settings.user:
        return f"Node {settings.name} is the virtual node of desktop user {owner!r}, not of {settings.user!r}"
    return None


async def check_ownership(kube: KubeClient, settings: NodeSettings) -> None:
    """Refuse (Conflict) to go on when a Node of our name exists and is not ours to adopt."""
    node = await kube.get_or_none(f"/api/v1/nodes/{settings.name}")
    problem = ownership_problem(node, settings) if node is not None else None
    if problem:
        raise errors.Conflict(
            f"{problem}: vk_bridge never takes over another node",
            hint=f"choose another node.name (KOD_VK_NODE__NAME); if that Node is a stale one of yours, a cluster "
            f"admin deletes it: kubectl delete node {settings.name}",
        )


def node_taint() -> dict[str, str]:
    return {"key": labels.VIRTUAL_NODE_TAINT_KEY, "value": "true", "effect": labels.VIRTUAL_NODE_TAINT_EFFECT}


def merged_capacity(info: wire.NodeInfo | None, overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable): the host's, then the provider's, then the settings'."""
    capacity = host_capacity()
    allocatable: dict[str, str] = {}
    if info is not None:
        capacity.update(info.capacity)
        allocatable.update(info.allocatable)
    capacity.update(overrides)
    merged_alloc = dict(capacity)
    merged_alloc.update({k: v for k, v in allocatable.items() if k not in overrides})
    return capacity, merged_alloc


def conditions(ready: bool, message: str, previous: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[dict[str, Any]]:
    """The node's conditions; lastTransitionTime moves only when a status changes."""
    now_s = k8s_time(now or datetime.now(UTC))
    prev = {c.get("type"): c for c in previous}
    wanted = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady", message),
    ]
    out = []
    for ctype, status, reason, msg in wanted:
        old = prev.get(ctype) or {}
        transition = old.get("lastTransitionTime") if old.get("status") == status else now_s
        out.append({
            "type": ctype, "status": status, "reason": reason, "message": msg,
            "lastHeartbeatTime": now_s, "lastTransitionTime": transition or now_s,
        })
    return out


class NodeController:
    """Registers the node and keeps its status current. `registered` is set once the Node exists;
    `ready` once its status says Ready."""

    def __init__(
        self,
        kube: KubeClient,
        provider: NodeProvider,
        settings: NodeSettings,
        *,
        address: str,
        kubelet_port: int,
        kubelet_version: str,
    ) -> None:
        self.kube = kube
        self.provider = provider
        self.settings = settings
        self.address = address
        self.kubelet_port = kubelet_port
        self.kubelet_version = kubelet_version
        self.path = f"/api/v1/nodes/{settings.name}"
        self.uid: str | None = None
        self.registered = asyncio.Event()
        self.ready = asyncio.Event()
        self.info: wire.NodeInfo | None = None
        #: The Node as the API last returned it (labels and taints others added included).
        self.last_seen: dict[str, Any] | None = None
        self.provider_ok = False
        self.provider_message = "waiting for the first ping of InterLink"
        self._last_posted: tuple[Any, ...] | None = None
        self._conditions: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    @property
    def host_ips(self) -> tuple[str, ...]:
        return (self.address,)

    @property
    def allocatable(self) -> dict[str, str]:
        return merged_capacity(self.info, self.settings.capacity)[1]

    def _object(self) -> dict[str, Any]:
        info = node_info(self.kubelet_version, self._runtime_version())
        spec: dict[str, Any] = {"taints": [node_taint()] if self.settings.taint else []}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.settings.name,
                "labels": node_labels(self.settings, info["architecture"]),
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", MANAGED_BY_ANNOTATION: MANAGED_BY},
            },
            "spec": spec,
        }

    def _runtime_version(self) -> str:
        version = self.info.version if self.info and self.info.version else "unknown"
        return f"kod-interlink://{version}"

    def _status(self) -> dict[str, Any]:
        capacity, allocatable = merged_capacity(self.info, self.settings.capacity)
        info = node_info(self.kubelet_version, self._runtime_version())
        self._conditions = conditions(self.provider_ok, self.provider_message, self._conditions)
        return {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": self._conditions,
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.settings.hostname},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": info,
        }

    async def register(self) -> dict[str, Any]:
        """Create the Node (with its taint), or bring an existing one's labels up to date; raises
        Conflict for a Node of this name that is not ours (see `check_ownership`)."""
        await self.ping_once()
        wanted = self._object()
        node = await self.kube.get_or_none(self.path)
        if node is None:
            try:
                node = await self.kube.create("/api/v1/nodes", wanted)
                log.info("node registered", node=self.settings.name)
            except errors.Conflict:
                node = await self.kube.get(self.path)
        if node is not None and node.get("metadata", {}).get("resourceVersion"):
            node = await self._reconcile(node, wanted)
        self.uid = node["metadata"]["uid"]
        self.last_seen = node
        self._conditions = list((node.get("status") or {}).get("conditions") or [])
        await self.post_status(force=True)
        self.registered.set()
        registered: dict[str, Any] = node
        return registered

    async def _reconcile(self, node: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        problem = ownership_problem(node, self.settings)
        if problem:
            raise errors.Conflict(f"{problem}: vk_bridge never takes over another node",
                                  hint=f"choose another node.name, or a cluster admin deletes it: kubectl delete node {self.settings.name}")
        meta = node.get("metadata") or {}
        have_labels = meta.get("labels") or {}
        taints = list((node.get("spec") or {}).get("taints") or [])
        if self.settings.taint and not any(t.get("key") == labels.VIRTUAL_NODE_TAINT_KEY for t in taints):
            # NodeRestriction forbids a node to change its own taints: only an admin can put it back.
            log.warning(
                "the node has lost its kod.io/virtual-node taint: pods that do not tolerate it may be scheduled here "
                "(and are refused)", node=self.settings.name,
                hint=f"a cluster admin restores it: kubectl taint node {self.settings.name} "
                f"{labels.VIRTUAL_NODE_TAINT_KEY}=true:{labels.VIRTUAL_NODE_TAINT_EFFECT}",
            )
        label_patch = {k: v for k, v in wanted["metadata"]["labels"].items() if have_labels.get(k) != v}
        if label_patch:
            node = await self.kube.patch(self.path, {"metadata": {"labels": label_patch}})
        return node

    async def ping_once(self) -> None:
        """Ask the provider for health and capacity; Ready follows the answer."""
        try:
            self.info = await self.provider.ping()
            unhealthy = [s for s in self.info.sidecars if not s.ok]
            ok = not unhealthy
            message = (
                "kubelet is posting ready status"
                if ok
                else "sidecar not healthy: " + "; ".join(f"{s.name}: {s.message or 'down'}" for s in unhealthy)
            )
        except errors.KodError as exc:
            ok, message = False, f"InterLink at {self.provider.url} does not answer: {exc}"
        if (ok, message) != (self.provider_ok, self.provider_message):
            log.info("provider health changed", ok=ok, message=message)
            self.provider_ok, self.provider_message = ok, message
            self._changed.set()

    async def post_status(self, *, force: bool = False) -> None:
        """PATCH nodes/<name>/status when something changed (or when forced)."""
        status = self._status()
        key = (
            tuple(sorted(status["capacity"].items())),
            tuple(sorted(status["allocatable"].items())),
            self.provider_ok,
            self.provider_message,
            self.address,
            self.kubelet_port,
        )
        if not force and key == self._last_posted:
            return
        self.last_seen = await self.kube.patch(self.path + "/status", {"status": status}) or self.last_seen
        self._last_posted = key
        if self.provider_ok:
            self.ready.set()
        else:
            self.ready.clear()

    async def run(self) -> None:
        """Ping the provider every `ping_interval_seconds`; post status on change, and at least
        every `status_interval_seconds`."""
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self.settings.ping_interval_seconds)
            except TimeoutError:
                pass
            self._changed.clear()
            try:
                await self.ping_once()
                force = loop.time() - last_full >= self.settings.status_interval_seconds
                await self.post_status(force=force)
                if force:
                    last_full = loop.time()
            except errors.KodError as exc:
                log.warning("node status update failed", error=str(exc))

    async def mark_not_ready(self, message: str) -> None:
        """On shutdown: say so at once instead of letting the Lease expire."""
        self.provider_ok, self.provider_message = False, message
        try:
            await self.kube.patch(self.path + "/status", {"status": {"conditions": conditions(False, message, self._conditions)}})
        except errors.KodError as exc:
            log.warning("could not mark the node NotReady", error=str(exc))
