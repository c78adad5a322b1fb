"""Label, annotation and taint keys: one place, so every component agrees on them."""

from __future__ import annotations

DOMAIN = "kod.io"

# --- Kubernetes objects created by cloudify (pods, services, secrets, PVCs, jobs) ---
SESSION = f"{DOMAIN}/session"          #: the session id; every object of a session carries it
APP = f"{DOMAIN}/app"                  #: firefox, libreoffice, blender, cuda-blender
ROLE = f"{DOMAIN}/role"                #: "app" (server side) or "viewer" (desktop side)
USER = f"{DOMAIN}/user"                #: the desktop user the session belongs to
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_CLOUDIFY = "cloudify"
#: Annotation with the RFC 3339 time after which leftovers of a session may be collected.
EXPIRES_AT = f"{DOMAIN}/expires-at"

# --- The virtual node ---
NODE_TYPE = "type"                     #: value VIRTUAL_KUBELET, as interLink and virtual-kubelet use
VIRTUAL_KUBELET = "virtual-kubelet"
DESKTOP_OF = f"{DOMAIN}/desktop-of"    #: node label: the user whose desktop this node is
#: Taint on the virtual node; only pods that tolerate it (viewer pods) land there.
VIRTUAL_NODE_TAINT_KEY = f"{DOMAIN}/virtual-node"
VIRTUAL_NODE_TAINT_EFFECT = "NoSchedule"

# --- Docker objects created by the Docker sidecar ---
DOCKER_PREFIX = "io.kod"
D_MANAGED_BY = f"{DOCKER_PREFIX}.managed-by"   #: value "kod-docker-sidecar"
D_POD_UID = f"{DOCKER_PREFIX}.pod.uid"
D_POD_NAMESPACE = f"{DOCKER_PREFIX}.pod.namespace"
D_POD_NAME = f"{DOCKER_PREFIX}.pod.name"
D_CONTAINER = f"{DOCKER_PREFIX}.container.name"
D_SESSION = f"{DOCKER_PREFIX}.session"
