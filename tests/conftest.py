"""Shared fixtures, split by the component they bring up (one plugin module each):

- tests.fixtures.environment: the Docker engine, the local cluster (or the one KUBECONFIG names),
  kubectl, and the project's images, brought up once per test session and reused when running.
- tests.fixtures.desktop: a real X server (Xvfb) and a real PulseAudio with a null sink on the
  host, screenshots and sound recording: the user's screen and speakers.
- tests.fixtures.virtual_node: the desktop-side stack (interlink, Docker sidecar, vk_bridge)
  registered as a virtual node of the cluster.
- tests.fixtures.users: the local cluster's two users (each with a kubeconfig of their own) and
  user B's desktop, for the attacks of one user on the other.
- tests.fixtures.home: the desktop at home (another host behind NAT, localenv.netlab), for the
  `home` tests; set up only when such a test runs.

Fast tests (no mark) need none of them; end-to-end tests are marked `e2e`.

Every test has a timeout (pytest-timeout, setup and teardown included): pyproject's default for
fast tests, E2E_TIMEOUT for end-to-end tests (the first one of a session also pays for the session
fixtures: the cluster, the images), or its own `@pytest.mark.timeout(seconds)`.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.environment",
    "tests.fixtures.desktop",
    "tests.fixtures.virtual_node",
    "tests.fixtures.users",
    "tests.fixtures.home",
]

#: Seconds an end-to-end test may take unless it says otherwise (its own waits are at most a few
#: minutes; this only ends a test that hangs).
E2E_TIMEOUT = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT))
