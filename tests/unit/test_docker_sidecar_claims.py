"""Claim volumes against the in-memory engine: storage is made only for claims the virtual
kubelet confirmed; a claim made again under its name gets a new, empty volume; the replaced
claim's volume goes once no container uses it, never while one does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kod import errors, wire
from sidecars.docker import naming
from sidecars.docker.runtime import Runtime
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import started, within


def claim_pod(name: str, uid: str, claim_uid: str | None) -> wire.PodCreateRequest:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "img", "volumeMounts": [{"name": "home", "mountPath": "/home"}]}],
        "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "home"}}],
        "restartPolicy": "Always",
    }
    claims = [{"name": "home", "uid": claim_uid}] if claim_uid else []
    return wire.PodCreateRequest.model_validate(
        {"pod": {"metadata": {"name": name, "namespace": "ns", "uid": uid}, "spec": spec}, "claims": claims}
    )


@pytest.fixture
async def rt_engine() -> AsyncIterator[tuple[Runtime, FakeEngine]]:
    engine = FakeEngine()
    rt = await started(engine)
    yield rt, engine
    await rt.stop()


def claim_volumes(engine: FakeEngine) -> dict[str, str]:
    return {n: v["Labels"][naming.PVC_CLAIM_UID] for n, v in engine.volumes_.items()
            if v["Labels"].get(naming.ROLE) == "pvc"}


async def test_a_claim_the_virtual_kubelet_did_not_confirm_gets_no_storage(rt_engine: tuple[Runtime, FakeEngine]) -> None:
    rt, engine = rt_engine
    with pytest.raises(errors.InvalidInput, match="not confirmed to exist"):
        await rt.create(claim_pod("p", "u-1", None))
    assert engine.volumes_ == {} and engine.containers_ == {}


async def test_a_replaced_claims_volume_goes_once_no_container_uses_it(rt_engine: tuple[Runtime, FakeEngine]) -> None:
    rt, engine = rt_engine
    await rt.create(claim_pod("old", "u-1", "c-1"))
    assert claim_volumes(engine) == {"kod-pvc_ns_home_c-1": "c-1"}
    # The claim was deleted and made again (new uid) while the old pod still runs with it.
    status, _ = await rt.create(claim_pod("new", "u-2", "c-2"))
    assert status.phase == "Running"
    await rt.claims.collect()
    assert claim_volumes(engine) == {"kod-pvc_ns_home_c-1": "c-1", "kod-pvc_ns_home_c-2": "c-2"}
    await rt.delete("ns", "old", uid="u-1", grace=0)
    await within(5, lambda: "kod-pvc_ns_home_c-1" not in engine.volumes_)
    assert claim_volumes(engine) == {"kod-pvc_ns_home_c-2": "c-2"}
    # The current claim's volume outlives its pods.
    await rt.delete("ns", "new", uid="u-2", grace=0)
    assert await rt.claims.collect() == []
    assert claim_volumes(engine) == {"kod-pvc_ns_home_c-2": "c-2"}


async def test_volumes_without_a_claim_uid_from_earlier_versions_are_never_touched(rt_engine: tuple[Runtime, FakeEngine]) -> None:
    rt, engine = rt_engine
    legacy = {**naming.base_labels("adopt"), naming.ROLE: "pvc", "io.kod.pod.namespace": "ns", naming.PVC_CLAIM: "home"}
    await engine.create_volume("kod-pvc_ns_home", legacy)
    await rt.create(claim_pod("p", "u-1", "c-1"))
    await rt.delete("ns", "p", uid="u-1", grace=0)
    await rt.claims.collect()
    assert set(engine.volumes_) == {"kod-pvc_ns_home", "kod-pvc_ns_home_c-1"}
