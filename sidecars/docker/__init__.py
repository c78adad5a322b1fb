"""The Docker sidecar: runs a pod's containers in the local Docker engine, one network namespace
per pod, under the desktop policy (no privileged containers, no host namespaces, only allow-listed
host paths and devices), and pushes status changes driven by Docker events."""
