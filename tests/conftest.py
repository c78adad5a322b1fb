"""Shared fixtures, split by the component they bring up (one plugin module each):

- tests.fixtures.environment: the Docker engine, the local cluster (or the one KUBECONFIG names),
  kubectl, and the project's images, brought up once per test session and reused when running.
- tests.fixtures.desktop: a real X server (Xvfb) and a real PulseAudio with a null sink on the
  host, screenshots and sound recording: the user's screen and speakers.
- tests.fixtures.virtual_node: the desktop-side stack (interlink, Docker sidecar, vk_bridge)
  registered as a virtual node of the cluster.

Fast tests (no mark) need none of them; end-to-end tests are marked `e2e`.
"""

pytest_plugins = [
    "tests.fixtures.environment",
    "tests.fixtures.desktop",
    "tests.fixtures.virtual_node",
]
