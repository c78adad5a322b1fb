"""Fixtures for running pods on the real node and on the virtual node side by side (imported by
the end-to-end tests that compare the two; see harness.py).

- `run_label`: a label unique to the test, carried by everything it creates.
- `reference_namespace`: a namespace of its own for the real node's pods, deleted afterwards;
  the virtual node's pods live in its owner's namespace, where the run's objects are deleted by
  `run_label`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.virtual_node import VirtualNode


@pytest.fixture
def run_label() -> tuple[str, str]:
    return ("kod.io/differential", uuid.uuid4().hex[:10])


@pytest.fixture
def reference_namespace(virtual_node: VirtualNode, run_label: tuple[str, str]) -> Iterator[str]:
    """The real node's namespace (its own, deleted afterwards); the virtual node's pods must live
    in its owner's namespace, where this run's objects are deleted by their label."""
    cluster = virtual_node.cluster
    name = f"kod-diff-{run_label[1][:6]}"
    cluster.kubectl("create", "namespace", name)
    owner = virtual_node.owner_namespace
    cluster.kubectl("create", "namespace", owner, check=False)
    try:
        yield name
    finally:
        selector = f"{run_label[0]}={run_label[1]}"
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "pods,configmaps,secrets", "-n", owner, "-l", selector, "--wait=false",
                        "--ignore-not-found", check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not cluster.kubectl_json("get", "pods", "-n", owner, "-l", selector)["items"]:
                break
            time.sleep(0.5)
        else:
            cluster.kubectl("delete", "pods", "-n", owner, "-l", selector, "--force", "--grace-period=0", check=False)
