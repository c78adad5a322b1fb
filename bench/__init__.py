"""Benchmarks (one script per measurement, `bench/<area>_<what>.py`) and what they share.

Run a script directly (`.venv/bin/python bench/virtual_node_pods.py`); it puts the checkout on
sys.path itself. What belongs here besides the scripts:

- `bench.results`: the one way to write a result (stamped with date, commit and load average,
  written whole: no numbers carried over from earlier runs);
- `bench.lab`: the app + viewer container lab on a desktop of the run's own, shared with the
  image tests (tests/e2e/images_support.py imports it);
- `bench.fake_sidecar`: a small real InterLink sidecar in memory, shared with interlink's unit
  tests (tests/unit/interlink_fake_sidecar.py imports it);
- `bench.cluster_facts`: settings of the running cluster a number depends on (the node monitor
  grace period), shared with the end-to-end tests.

Layering (tests/unit/test_layers.py): bench may import the product packages, never tests; tests
may import bench; the product imports neither.
"""
