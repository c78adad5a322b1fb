"""The registry of virtual nodes: which identities each desktop's virtual node runs pods of.

The ValidatingAdmissionPolicy in `kustomizations/admission` refuses, at creation, pods and
bindings that aim at a virtual node from anyone else; CEL cannot read Nodes, so the policy reads
this ConfigMap as its parameter: one key per virtual node, whose value is the allowed identities,
comma-separated, the owner's namespace first ("kod-alice" or "kod-alice,ci/builder").

    from localenv import node_registry
    node_registry.register(cluster, "desktop-laptop", ["kod-alice"])    # idempotent
    node_registry.unregister(cluster, "desktop-laptop")
    node_registry.entries(cluster)                                       # {"desktop-laptop": "kod-alice"}

Each change is one merge patch of one key, so two desktop stacks registering at once never lose
each other's entry. vk_bridge never reads the registry (it has its own settings, written from
the same values by localenv.desktop_stack): the two layers fail independently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kod import errors
from localenv.handle import ClusterHandle

NAMESPACE = "kod-system"
NAME = "kod-virtual-nodes"


def value(allowed: Sequence[str]) -> str:
    """The registry value of a node: its allowed identities, comma-separated."""
    if not allowed or any(not a or "," in a for a in allowed):
        raise errors.InvalidInput(f"a virtual node needs its owner's namespace, then other identities, without commas: {list(allowed)!r}")
    return ",".join(allowed)


def _patch(cluster: ClusterHandle, data: dict[str, str | None]) -> bool:
    """Merge-patch the registry; False when it does not exist."""
    proc = cluster.kubectl("patch", "configmap", NAME, "-n", NAMESPACE, "--type", "merge",
                           "-p", json.dumps({"data": data}), check=False)
    if proc.returncode == 0:
        return True
    if "NotFound" in proc.stderr or "not found" in proc.stderr:
        return False
    raise errors.Internal(f"cannot update ConfigMap {NAMESPACE}/{NAME}: {proc.stderr.strip()}")


def register(cluster: ClusterHandle, node: str, allowed: Sequence[str]) -> str:
    """Say in the registry that `node` runs pods of `allowed` (the owner's namespace first)."""
    text = value(allowed)
    if entries(cluster).get(node) == text:
        return "unchanged"
    if not _patch(cluster, {node: text}):
        created = cluster.kubectl("create", "configmap", NAME, "-n", NAMESPACE, f"--from-literal={node}={text}", check=False)
        if created.returncode != 0 and not _patch(cluster, {node: text}):  # another stack created it first
            raise errors.Internal(f"cannot create ConfigMap {NAMESPACE}/{NAME}: {created.stderr.strip()}")
    return f"{node} runs pods of {text}"


def unregister(cluster: ClusterHandle, node: str) -> str:
    """Remove `node` from the registry (its Node is gone)."""
    if node not in entries(cluster):
        return "not registered"
    _patch(cluster, {node: None})
    return f"{node} removed"


def entries(cluster: ClusterHandle) -> dict[str, str]:
    """The registry's entries ({} when it does not exist)."""
    proc = cluster.kubectl("get", "configmap", NAME, "-n", NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return {}
    return dict(json.loads(proc.stdout).get("data") or {})
