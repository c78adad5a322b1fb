"""The hostPath provisioner's decisions: which claims get a volume, what that volume looks like,
which volumes are deleted, and that it never deletes a directory outside its root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localenv import provisioner as prov

P = "kod.io/hostpath"
CLASSES = {
    "kod-hostpath": {"metadata": {"name": "kod-hostpath", "annotations": {prov.DEFAULT_CLASS: "true"}},
                     "provisioner": P, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"},
    "other": {"metadata": {"name": "other"}, "provisioner": "example.com/else"},
    "late": {"metadata": {"name": "late"}, "provisioner": P, "volumeBindingMode": "WaitForFirstConsumer"},
}


def _claim(cls: str | None = "kod-hostpath", *, phase: str = "Pending", volume: str | None = None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    if cls is not None:
        spec["storageClassName"] = cls
    if volume:
        spec["volumeName"] = volume
    return {"metadata": {"name": "data", "namespace": "ns", "uid": "u-1", "annotations": annotations or {}},
            "spec": spec, "status": {"phase": phase}}


def test_a_pending_claim_of_our_class_or_of_no_class_needs_a_volume() -> None:
    assert prov.needs_volume(_claim(), CLASSES, P)
    assert prov.needs_volume(_claim(None), CLASSES, P)


def test_claims_of_other_provisioners_bound_claims_and_unscheduled_late_claims_are_left_alone() -> None:
    assert not prov.needs_volume(_claim("other"), CLASSES, P)
    assert not prov.needs_volume(_claim(phase="Bound", volume="pvc-u-1"), CLASSES, P)
    assert not prov.needs_volume(_claim("late"), CLASSES, P)
    assert prov.needs_volume(_claim("late", annotations={prov.SELECTED_NODE: "n"}), CLASSES, P)


def test_the_volume_is_a_hostpath_under_the_root_pinned_to_the_node_and_bound_to_the_claim() -> None:
    pv = prov.build_volume(_claim(), CLASSES["kod-hostpath"], root=Path("/v"), node="kod-worker", provisioner=P)
    spec = pv["spec"]
    assert pv["metadata"]["name"] == "pvc-u-1"
    assert spec["hostPath"]["path"] == "/v/pvc-u-1"
    assert spec["claimRef"]["uid"] == "u-1" and spec["claimRef"]["namespace"] == "ns"
    assert spec["capacity"] == {"storage": "1Gi"} and spec["persistentVolumeReclaimPolicy"] == "Delete"
    term = spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term["values"] == ["kod-worker"]


def test_a_late_bound_claim_gets_a_volume_on_the_node_the_scheduler_chose() -> None:
    claim = _claim("late", annotations={prov.SELECTED_NODE: "other-node"})
    pv = prov.build_volume(claim, CLASSES["late"], root=Path("/v"), node="kod-worker", provisioner=P)
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["other-node"]


def test_only_our_released_volumes_with_delete_policy_are_deleted() -> None:
    ours = {"metadata": {"annotations": {prov.PROVISIONED_BY: P}}, "spec": {"persistentVolumeReclaimPolicy": "Delete"},
            "status": {"phase": "Released"}}
    assert prov.is_released(ours, P)
    assert not prov.is_released({**ours, "status": {"phase": "Bound"}}, P)
    assert not prov.is_released({**ours, "spec": {"persistentVolumeReclaimPolicy": "Retain"}}, P)
    assert not prov.is_released({**ours, "metadata": {"annotations": {prov.PROVISIONED_BY: "x"}}}, P)


def test_no_directory_outside_the_root_is_ever_deleted() -> None:
    root = Path("/v")
    assert prov.safe_dir(root, "/v/pvc-1") == Path("/v/pvc-1")
    for bad in ("/", "/v", "/etc/pvc-1", "/v/pvc-1/../../etc", "/v/sub/pvc-1", "/v/other"):
        assert prov.safe_dir(root, bad) is None
