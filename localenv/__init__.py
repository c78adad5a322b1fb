"""localenv: sets up everything this project needs on one machine, idempotently.

`python -m localenv up|down|status|images` (see `localenv.cli`): the Debian packages
(`packages`), the Docker engine (`docker_engine`), the `debian:bookworm-slim` base image
(`base_image`), Kubernetes and etcd built from the Go module proxy at pinned releases
(`gobuild`), and a real one-machine cluster (`cluster`: certificates in `pki`, one module per
daemon in `k8s/`, the hostPath `provisioner`, images moved from Docker by `images_import`),
each daemon a background process tracked by a PID file (`procs`). `paths` says where everything
lives; `handle` gives tests and tools a handle on the cluster to use (the local one, or the one
KUBECONFIG names). The project's images (`images`) and the desktop stack (`desktop_stack`) are
other components' modules that `up --demo` calls; the desktop stack makes its owner's cluster
user (`users`: certificate, kubeconfig, namespace kod-<user>, RBAC) and keeps its node in the
registry of virtual nodes that the admission policy reads (`node_registry`).

Layering: localenv imports only `kod` (and third-party libraries).
"""
