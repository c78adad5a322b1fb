"""Cluster objects localenv applies after the API server is up (built as data, applied with
`kubectl apply --server-side`): RBAC for the API server's kubelet client and for the storage
provisioner, and the default StorageClass."""

from __future__ import annotations

import json
from typing import Any

from localenv.k8s import certs
from localenv.k8s.context import Context
from localenv.shell import run

FIELD_MANAGER = "kod-localenv"
#: The `provisioner` of the default StorageClass, served by localenv.provisioner.
PROVISIONER_NAME = "kod.io/hostpath"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def _binding(name: str, role: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def objects(ctx: Context) -> list[dict[str, Any]]:
    """Everything localenv applies, in order."""
    return [
        # The API server calls kubelets (logs, exec, port-forward) as this user; kubelets
        # authorize it through the API server (webhook mode).
        _binding("kod:apiserver-kubelet-client", "system:kubelet-api-admin", certs.APISERVER_KUBELET_CLIENT),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "kod:storage-provisioner"},
            "rules": [
                {"apiGroups": [""], "resources": ["persistentvolumes"],
                 "verbs": ["get", "list", "watch", "create", "delete"]},
                {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        },
        _binding("kod:storage-provisioner", "kod:storage-provisioner", certs.PROVISIONER_USER),
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": ctx.settings.storage_class,
                "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            },
            "provisioner": PROVISIONER_NAME,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
    ]


def apply(ctx: Context) -> str:
    """Apply the objects (idempotent); returns kubectl's summary."""
    doc = {"apiVersion": "v1", "kind": "List", "items": objects(ctx)}
    proc = run(
        [ctx.paths.kubectl, f"--kubeconfig={ctx.paths.admin_kubeconfig}", "apply", "--server-side",
         f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-"],
        input=json.dumps(doc), timeout=120,
    )
    changed = [line for line in proc.stdout.splitlines() if not line.endswith(" serverside-applied")]
    return f"{len(doc['items'])} objects applied" + (f" ({'; '.join(changed)})" if changed else "")
