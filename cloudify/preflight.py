"""What cloudify checks before it creates anything: is the cluster there and fast enough, is
there a node that may run the app and has its image, is the user's virtual node there, and can
the desktop reach node addresses (NodePort) or must it go through the API server (port-forward).

One request (the node list) answers all of it; its duration is the cluster's response time,
compared with the original's 2 s threshold. The original timed `kubectl describe pods` for the
same reason: a request that makes the API server work, not a cached /version.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from kod import apps, errors, labels
from kod.kube import KubeClient
from kod.names import virtual_node_name

from cloudify.options import SessionOptions
from cloudify.settings import CloudifySettings

#: Seconds a TCP connect to a node address may take to count as reachable.
REACH_PROBE_SECONDS = 0.5
#: The port probed on a node address to tell whether this desktop reaches the cluster's NodePorts:
#: the bottom of Kubernetes' default NodePort range (30000-32767). A node answers there whether or
#: not a Service has it (a connection, or its host's refusal); only a firewall on the way stays
#: silent. (The kubelet's port says nothing about NodePorts: a firewall may open one and not the other.)
NODE_PORT_PROBE = 30000


@dataclass(frozen=True)
class NodeView:
    """The parts of a Node that matter here."""

    name: str
    labels: dict[str, str]
    ready: bool
    schedulable: bool
    taints: list[dict[str, Any]]
    addresses: list[tuple[str, str]]
    images: frozenset[str]
    allocatable: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @classmethod
    def of(cls, node: dict[str, Any]) -> NodeView:
        # Any of these may be absent or null, depending on who wrote the node (a virtual kubelet).
        status, spec = node.get("status") or {}, node.get("spec") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        images = frozenset(name for img in status.get("images") or [] for name in img.get("names") or [])
        return cls(
            name=node["metadata"]["name"],
            labels=node["metadata"].get("labels") or {},
            ready=conditions.get("Ready") == "True",
            schedulable=not spec.get("unschedulable"),
            taints=spec.get("taints") or [],
            addresses=[(a.get("type", ""), a.get("address", "")) for a in status.get("addresses") or []],
            images=images,
            allocatable=status.get("allocatable") or {},
            created=node["metadata"].get("creationTimestamp") or "",
        )

    @property
    def is_virtual(self) -> bool:
        return self.labels.get(labels.NODE_TYPE) == labels.VIRTUAL_KUBELET

    def has_image(self, ref: str) -> bool:
        # The kubelet reports both "kod/firefox:0.1.0" and "docker.io/kod/firefox:0.1.0" forms.
        return ref in self.images or f"docker.io/{ref}" in self.images or f"docker.io/library/{ref}" in self.images

    def blocking_taints(self) -> list[dict[str, Any]]:
        return [t for t in self.taints if t.get("effect") in ("NoSchedule", "NoExecute")]


@dataclass
class Preflight:
    """The answers, plus how long the cluster took to give them."""

    latency: float
    nodes: list[NodeView]
    app_nodes: list[NodeView] = field(default_factory=list)
    virtual_node: NodeView | None = None


def eligible_app_nodes(nodes: list[NodeView], settings: CloudifySettings) -> list[NodeView]:
    """Nodes the app pod may land on: ready, schedulable, untainted, real, nobody's desktop and
    not the user's own node."""
    return [
        n for n in nodes
        if n.ready and n.schedulable and not n.is_virtual and labels.DESKTOP_OF not in n.labels
        and n.name != settings.user_node and not n.blocking_taints()
    ]


def find_virtual_node(nodes: list[NodeView], user: str, *, name: str | None = None,
                      hostname: str = "") -> NodeView | None:
    """The user's virtual node (type=virtual-kubelet, kod.io/desktop-of=<user>): the one named
    `name` when given; else, of several, the one with this desktop's default name, then a ready
    one, then the oldest (a test or second desktop of the same user registers others)."""
    mine = [n for n in nodes if n.is_virtual and n.labels.get(labels.DESKTOP_OF) == user]
    if name is not None:
        return next((n for n in mine if n.name == name), None)
    default = virtual_node_name(hostname) if hostname else None
    mine.sort(key=lambda n: (n.name != default, not n.ready, n.created))
    return mine[0] if mine else None


async def measure(kube: KubeClient, *, timeout: float) -> tuple[float, list[NodeView]]:
    """List the nodes; (seconds it took, the nodes). Raises Unavailable when there is no answer
    within `timeout`."""
    start = time.monotonic()
    listing = await kube.request("GET", "/api/v1/nodes", timeout=timeout, retry=False)
    return time.monotonic() - start, [NodeView.of(n) for n in listing.get("items", [])]


def check(
    pre: Preflight, options: SessionOptions, settings: CloudifySettings, user: str, *, app_image: str,
    hostname: str = "",
) -> None:
    """Fill in the eligible app nodes and the virtual node; raise a clear error when the session
    cannot start. Run before anything is created."""
    pre.app_nodes = eligible_app_nodes(pre.nodes, settings)
    if not pre.app_nodes:
        raise errors.Unavailable(
            f"no node of the cluster may run {options.app.name}: none is ready, schedulable, untainted "
            "and other than your own or a virtual node",
            hint="`kubectl get nodes` shows them; the local cluster comes up with `python -m localenv up`",
        )
    for resource in options.app.extended_resources:
        pre.app_nodes = [n for n in pre.app_nodes if str(n.allocatable.get(resource, "0")) not in ("0", "")]
        if not pre.app_nodes:
            raise errors.Unavailable(
                f"{options.app.name} needs {resource}, and no node that may run it offers one",
                hint=f"run `{options.app.name.removeprefix('cuda-')}` instead, or add a node with the device plugin",
            )
    if settings.check_images and not any(n.has_image(app_image) for n in pre.app_nodes):
        raise errors.NotFound(
            f"image {app_image} is on no node that may run {options.app.name}",
            hint=image_advice(options.app.image, app_image),
        )
    if options.run_mode == "pod":
        pre.virtual_node = find_virtual_node(pre.nodes, user, name=settings.virtual_node, hostname=hostname)
        if pre.virtual_node is None and settings.virtual_node:
            raise errors.Unavailable(
                f"there is no virtual node {settings.virtual_node!r} of user {user!r}",
                hint="check virtual_node in the config file against `kubectl get nodes -l type=virtual-kubelet`",
            )
        if pre.virtual_node is None:
            raise errors.Unavailable(
                f"there is no virtual node for user {user!r} (a node labelled {labels.NODE_TYPE}="
                f"{labels.VIRTUAL_KUBELET},{labels.DESKTOP_OF}={user})",
                hint="start the desktop stack (`python -m localenv up --demo`), or run the viewer "
                "locally with -r docker or -r native",
            )
        if not pre.virtual_node.ready:
            raise errors.Unavailable(
                f"your virtual node {pre.virtual_node.name} is not ready",
                hint="is the desktop stack running? or use -r docker / -r native",
            )


def image_advice(name: str, ref: str) -> str:
    """What to do when no node has the app's image `ref` (the project's image `name`): the one
    command that builds it and imports it into the cluster's nodes, when it is the project's own
    image; else where it must come from."""
    pulled = "if your nodes pull from a registry, set check_images = false in the config file"
    if ref == apps.image_ref(name):
        return f"build it and import it into the cluster with `python -m localenv images {name}`; {pulled}"
    return f"push {ref} to a registry your nodes pull from (or load it onto them); {pulled}"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def candidate_addresses(nodes: list[NodeView], *, from_container: bool) -> list[str]:
    """Node addresses worth trying for a NodePort, best first: InternalIP, ExternalIP, then
    host names. A container cannot reach the desktop's loopback, so those are skipped for it."""
    order = {"InternalIP": 0, "ExternalIP": 1, "Hostname": 2, "InternalDNS": 3, "ExternalDNS": 4}
    found: list[tuple[int, str]] = []
    for node in nodes:
        for kind, addr in node.addresses:
            if kind in order and addr and not (from_container and is_loopback(addr)):
                found.append((order[kind], addr))
    seen: list[str] = []
    for _, addr in sorted(found, key=lambda t: t[0]):
        if addr not in seen:
            seen.append(addr)
    return seen


async def reachable(address: str, port: int, *, timeout: float = REACH_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to address:port is accepted or actively refused (the address is
    routable from here) within `timeout`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def pick_node_address(nodes: list[NodeView], *, from_container: bool, port: int = NODE_PORT_PROBE) -> str | None:
    """The first node address at which the desktop reaches a NodePort (probing `port`); None when
    none answers and the API server's port-forward must do."""
    for addr in candidate_addresses(nodes, from_container=from_container):
        if await reachable(addr, port):
            return addr
    return None
