"""The differential harness: each pod of a corpus runs on the cluster's real node (the upstream
kubelet, the reference) and on the desktop's virtual node, and what a user sees of the two is
compared.

- `corpus`: the pod specs, as data, each with the state it settles in.
- `compare`: the normalised view of a pod (phase, conditions, container states, restarts,
  termination messages, first log lines, event reasons) and the diff of two views.
- `known`: the differences accepted, each with its reason; one that no longer occurs is an error.
- `harness`: runs a corpus on both nodes at once and collects the views.

The end-to-end test is tests/e2e/test_differential.py; compare's own test
tests/unit/test_differential_compare.py.
"""
