"""activeDeadlineSeconds on the virtual node, against the real kubelet: a pod whose main
container would start only after its deadline ran out (its init container outlives the deadline)
ends Failed/DeadlineExceeded with nothing of it running, on kod-worker and on the desktop alike.
The reconciler's side of it, deterministically: tests/unit/test_docker_sidecar_deadline.py."""

from __future__ import annotations

import pytest

from tests.differential import compare, harness
from tests.differential.corpus import Case, sh
from tests.differential.fixtures import reference_namespace, run_label  # noqa: F401 (fixtures)
from tests.fixtures.virtual_node import VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

#: The init container outlives the deadline by 2 s: the main container would start after it.
LATE_MAIN = Case(
    "deadline-late-main",
    [sh("main", "echo main started; sleep 90")],
    linger=4,
    spec={"activeDeadlineSeconds": 2, "initContainers": [sh("init", "sleep 4")]},
)


def _not_running(view: compare.View, path: str) -> bool:
    return not view.get(path, "none").startswith("running")


def test_a_container_due_after_the_deadline_never_runs_on_either_node(
    virtual_node: VirtualNode, reference_namespace: str, run_label: tuple[str, str],
) -> None:
    sides = [
        harness.Side("real", reference_namespace, {"kubernetes.io/hostname": virtual_node.cluster.node_name}),
        harness.Side("virtual", virtual_node.owner_namespace, {"kubernetes.io/hostname": virtual_node.name}),
    ]
    result = harness.run(virtual_node.cluster, [LATE_MAIN], sides, label=run_label, timeout=120)
    views = result.views[LATE_MAIN.name]
    report = harness.dump(result)
    assert not result.unsettled, report
    for side in ("real", "virtual"):
        view = views[side]
        assert (view["phase"], view.get("reason")) == ("Failed", "DeadlineExceeded"), report
        assert _not_running(view, "container.main.state") and _not_running(view, "init.init.state"), report
        assert view.get("container.main.ready") != "True", report
    # What the user reads of the main container is what the kubelet shows.
    assert views["virtual"].get("container.main.state") == views["real"].get("container.main.state"), report
    # Nothing of the pod runs in Docker any more (the infra container, with the pod's secrets, too).
    pod = virtual_node.get(virtual_node.owner_namespace, LATE_MAIN.name)
    assert pod is not None
    running = [c.name for c in virtual_node.containers(pod["metadata"]["uid"], all=False)]
    assert running == [], report
