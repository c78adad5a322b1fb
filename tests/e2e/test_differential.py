"""The virtual node against the real kubelet: every pod of tests/differential/corpus.py runs on the
cluster's real node (kod-worker, upstream kubelet and containerd) and on the desktop's virtual
node at once, and what a user sees of each pair (tests/differential/compare.py) must be the same
but for the differences tests/differential/known.py accepts, each with its reason; an accepted
difference that no longer occurs fails the test too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.differential import compare, corpus, harness, known
from tests.differential.fixtures import reference_namespace, run_label  # noqa: F401 (fixtures)
from tests.fixtures.virtual_node import VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_the_corpus_looks_the_same_on_the_virtual_node_as_on_the_real_one(
    virtual_node: VirtualNode, reference_namespace: str, run_label: tuple[str, str],
) -> None:
    cases = corpus.cases()
    sides = [
        harness.Side("real", reference_namespace, {"kubernetes.io/hostname": virtual_node.cluster.node_name}),
        harness.Side("virtual", virtual_node.owner_namespace, {"kubernetes.io/hostname": virtual_node.name}),
    ]
    result = harness.run(virtual_node.cluster, cases, sides, label=run_label, timeout=120)

    differences = {c.name: compare.diff(result.views.get(c.name, {}).get("real", {}),
                                        result.views.get(c.name, {}).get("virtual", {})) for c in cases}
    unexpected, stale = known.check(differences, known.KNOWN, [c.name for c in cases])
    report = [f"{len(cases)} cases in {result.seconds:.0f} s"]
    report += [f"not settled: {case} on {', '.join(sides_)}" for case, sides_ in sorted(result.unsettled.items())]
    # The same difference in many cases is one line, with the cases it shows in.
    grouped: dict[compare.Difference, list[str]] = {}
    for case, d in unexpected:
        grouped.setdefault(d, []).append(case)
    report += [f"unexpected: {d}  [{len(names)} case(s): {', '.join(names)}]" for d, names in grouped.items()]
    report += [f"stale known difference (no longer occurs): {k.case} {k.path}: {k.reason}" for k in stale]
    print("\n".join(report))
    if os.environ.get("KOD_DIFFERENTIAL_DUMP"):  # every view, for whoever studies a run
        Path(os.environ["KOD_DIFFERENTIAL_DUMP"]).write_text(harness.dump(result) + "\n" + "\n".join(report) + "\n")
    # A case that never settles on the real node is a wrong case (its settle predicate).
    wrong = [case for case, sides_ in result.unsettled.items() if "real" in sides_]
    assert not unexpected and not stale and not wrong, "\n".join(report)
