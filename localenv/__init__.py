"""localenv: sets up everything this project needs on one machine, idempotently.

`python -m localenv up|down|status`: the Docker engine, the `debian:bookworm-slim` base image
(from debootstrap when it cannot be pulled), a real one-machine Kubernetes cluster built from the
upstream sources at a pinned release, and the project's images. Used by the README's commands and
by the test fixtures. It imports only `kod`.
"""
