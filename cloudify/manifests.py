"""The session's Kubernetes objects, built as data (plain dicts in the API's JSON shape).

    job      = app_job(plan)                 # the app: a Job, so the cluster expires it alone
    secret   = app_secret(plan, owner)       # the app's keys and password, owned by the Job
    secret   = viewer_secret(plan, owner)    # the viewer's keys, password and X cookie, owned by the Job
    service  = app_service(plan, owner)      # NodePort (or ClusterIP), owned by the Job
    viewer   = viewer_pod(plan, owner, ...)  # on the user's virtual node, owned by the Job
    volume   = data_claim(plan)              # -v: one PVC per user and app, never owned

The two Secrets split the session's credentials (cloudify/credentials.py): the app pod mounts only
the app's, the viewer pod only the viewer's, so the desktop's virtual node, which may read only
the Secrets of its own pods, never sees the app's SSH host private key.

Why a Job: `activeDeadlineSeconds` ends a forgotten session, `ttlSecondsAfterFinished` deletes a
finished one, and since every other object of the session has the Job as its owner, the garbage
collector removes them with it, even when no cloudify is left to clean up.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kod import apps, labels

from cloudify import names as n
from cloudify.credentials import Credentials
from cloudify.options import SessionOptions
from cloudify.settings import CloudifySettings

#: Seconds a finished Job (and, through it, its objects) stays before the cluster deletes it.
FINISHED_TTL_SECONDS = 10
#: Grace period of the app: enough for the app to save its profile, short enough to end quickly.
APP_GRACE_SECONDS = 10
#: Keys of the session's Secrets (the images' file names, kod.apps): the app's Secret holds
#: APP_KEYS, the viewer's VIEWER_KEYS (and the X cookie).
K_AUTHORIZED_KEYS = apps.SECRET_AUTHORIZED_KEYS
K_HOST_KEY = apps.SECRET_HOST_KEY
K_VNC_PASSWORD = apps.SECRET_VNC_PASSWORD
K_CLIENT_KEY = apps.SECRET_SSH_KEY
K_KNOWN_HOSTS = apps.SECRET_KNOWN_HOSTS
K_XAUTHORITY = "Xauthority"
APP_KEYS = (K_AUTHORIZED_KEYS, K_HOST_KEY, K_VNC_PASSWORD)
VIEWER_KEYS = (K_CLIENT_KEY, K_KNOWN_HOSTS, K_VNC_PASSWORD)
#: Where the viewer sees the desktop's X sockets and the kod PulseAudio socket's directory.
X11_DIR = "/tmp/.X11-unix"
VIEWER_PULSE_DIR = "/run/kod/pulse"
DATA_VOLUME = "data"


@dataclass(frozen=True)
class SessionPlan:
    """Everything the manifests are built from."""

    names: n.SessionNames
    options: SessionOptions
    settings: CloudifySettings
    credentials: Credentials
    now: datetime
    desktop_host: str

    @property
    def persist_paths(self) -> tuple[str, ...]:
        """What -v keeps: the setting for this app, else the catalog's."""
        configured = self.settings.persist_paths.get(self.options.app.name)
        return tuple(configured) if configured else self.options.app.persist_paths

    @property
    def app_image(self) -> str:
        return self.settings.image(self.options.app.image)

    @property
    def viewer_image(self) -> str:
        return self.settings.image("viewer")

    @property
    def expires(self) -> str:
        # The Job's deadline, plus its TTL and a margin: after this nothing of it may remain.
        return n.expires_at(self.now, self.settings.max_session_seconds + FINISHED_TTL_SECONDS + 60)

    def metadata(self, name: str, role: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.names.namespace,
            "labels": self.names.labels(role),
            "annotations": {
                labels.EXPIRES_AT: self.expires,
                n.A_DESKTOP_HOST: self.desktop_host,
                n.A_RUN_MODE: self.options.run_mode,
                n.A_PROTOCOL: self.options.protocol,
                n.A_SECURE: "true" if self.options.secure else "false",
            },
        }
        if self.options.persist:
            meta["annotations"][n.A_PERSIST] = self.names.pvc
        if owner:
            meta["ownerReferences"] = [owner]
        return meta


@dataclass(frozen=True)
class Target:
    """Where a viewer finds the app: SSH at `host`; in clear mode (--insecure) VNC or noVNC at
    `vnc_host` (cloudify's port-forward: never a NodePort). `vnc_port`/`novnc_port` are None when
    they are reached through the SSH tunnel instead (the default)."""

    host: str
    ssh_port: int
    vnc_port: int | None = None
    novnc_port: int | None = None
    vnc_host: str | None = None


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the session's Job: the garbage collector deletes the owned object
    when the Job goes, and `blockOwnerDeletion` keeps foreground deletion honest."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _secret(plan: SessionPlan, name: str, role: str, owner: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": plan.metadata(name, role, owner),
        "type": "Opaque",
        "data": data,
    }


def app_secret(plan: SessionPlan, owner: dict[str, Any]) -> dict[str, Any]:
    """The app's side: sshd's host private key, the one client key it accepts, the VNC password."""
    data = {k: _b64(v) for k, v in plan.credentials.app_files().items()}
    return _secret(plan, plan.names.app_secret, n.ROLE_APP, owner, data)


def viewer_secret(plan: SessionPlan, owner: dict[str, Any], *, xauthority: bytes | None = None) -> dict[str, Any]:
    """The viewer's side: the client's private key, the pinned host key, the VNC password, and
    the desktop's X cookie (pod mode). Never the host's private key."""
    data = {k: _b64(v) for k, v in plan.credentials.viewer_files().items()}
    if xauthority:
        data[K_XAUTHORITY] = _b64(xauthority)
    return _secret(plan, plan.names.viewer_secret, n.ROLE_VIEWER, owner, data)


def _ports(options: SessionOptions) -> list[tuple[str, int]]:
    # SSH only, in every mode: VNC and noVNC listen on the app pod's localhost, reached through
    # SSH (the default) or, in clear mode, the API server's port-forward: never on every node.
    return [("ssh", apps.SSH_PORT)]


def app_service(plan: SessionPlan, owner: dict[str, Any], *, node_port: bool) -> dict[str, Any]:
    """The app's Service: SSH only (VNC and noVNC inside it, and the sound stream); in clear mode
    VNC goes through the API server's port-forward instead, never a NodePort. NodePort when the
    desktop reaches node addresses, else ClusterIP."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": plan.metadata(plan.names.base, n.ROLE_APP, owner),
        "spec": {
            "type": "NodePort" if node_port else "ClusterIP",
            "selector": {labels.SESSION: plan.names.session, labels.ROLE: n.ROLE_APP},
            "ports": [{"name": name, "port": port, "targetPort": port, "protocol": "TCP"} for name, port in _ports(plan.options)],
        },
    }


def node_affinity(settings: CloudifySettings) -> dict[str, Any]:
    """Never a virtual node, never a node that is somebody's desktop, never the user's node."""
    term: dict[str, Any] = {
        "matchExpressions": [
            {"key": labels.NODE_TYPE, "operator": "NotIn", "values": [labels.VIRTUAL_KUBELET]},
            {"key": labels.DESKTOP_OF, "operator": "DoesNotExist"},
        ]
    }
    if settings.user_node:
        term["matchFields"] = [{"key": "metadata.name", "operator": "NotIn", "values": [settings.user_node]}]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _env(values: dict[str, str | int]) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in values.items()]


def app_job(plan: SessionPlan) -> dict[str, Any]:
    """The app as a Job of one pod that never restarts. The app exits by itself when its viewer
    disconnects, or when none connects within the timeout (KOD_CONNECT_TIMEOUT); the Job then
    finishes and the cluster deletes it and everything it owns."""
    opts, settings, app = plan.options, plan.settings, plan.options.app
    secret_dir = apps.APP_SECRET_DIR
    env = _env({
        apps.ENV_VNC_PASSWORD_FILE: f"{secret_dir}/{K_VNC_PASSWORD}",
        apps.ENV_AUTHORIZED_KEYS_FILE: f"{secret_dir}/{K_AUTHORIZED_KEYS}",
        apps.ENV_HOST_KEY_FILE: f"{secret_dir}/{K_HOST_KEY}",
        # VNC and noVNC on the pod's localhost only, in every mode: SSH's -L and the API server's
        # port-forward (clear mode) both connect there; nothing else of the cluster reaches them.
        apps.ENV_ENCRYPT: "1",
        apps.ENV_GEOMETRY: settings.geometry,
        apps.ENV_DEPTH: settings.depth,
        apps.ENV_VNC_PORT: apps.VNC_PORT,
        apps.ENV_NOVNC_PORT: apps.NOVNC_PORT,
        apps.ENV_SSH_PORT: apps.SSH_PORT,
        apps.ENV_AUDIO_PORT: apps.AUDIO_PORT,
        apps.ENV_CONNECT_TIMEOUT: max(1, round(opts.timeout)),
        apps.ENV_FRAME_RATE: opts.frame_rate,
    })
    limits: dict[str, str] = {**app.limits, **app.extended_resources}
    requests: dict[str, str] = {**app.requests, **app.extended_resources}
    container: dict[str, Any] = {
        "name": "app",
        "image": plan.app_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": env,
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in _ports(opts)],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "session", "mountPath": secret_dir, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["NET_RAW"]}},
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "session",
            "secret": {
                "secretName": plan.names.app_secret,
                "items": [{"key": k, "path": k} for k in APP_KEYS],
                # Group-readable for the app's user (fsGroup); sshd accepts a host key that the
                # user does not own, and the files are copied nowhere.
                "defaultMode": 0o440,
            },
        }
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the app has no business with the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": APP_GRACE_SECONDS,
        "affinity": node_affinity(settings),
        "securityContext": {"fsGroup": apps.APP_UID},
        "containers": [container],
        "volumes": volumes,
    }
    if opts.persist:
        volumes.append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": plan.names.pvc}})
        container["volumeMounts"] += [
            {"name": DATA_VOLUME, "mountPath": f"{apps.APP_HOME}/{path}", "subPath": path} for path in plan.persist_paths
        ]
        pod_spec["initContainers"] = [_data_init_container(plan)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": plan.metadata(plan.names.base, n.ROLE_APP),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.max_session_seconds,
            "ttlSecondsAfterFinished": FINISHED_TTL_SECONDS,
            "template": {"metadata": {"labels": plan.names.labels(n.ROLE_APP)}, "spec": pod_spec},
        },
    }


def _data_init_container(plan: SessionPlan) -> dict[str, Any]:
    """Creates the persisted directories in the volume and gives them to the app's user: a
    fresh volume's root belongs to root, and subPath directories made by the kubelet too."""
    paths = [f"/data/{p}" for p in plan.persist_paths]
    script = 'mkdir -p "$@" && chown {uid}:{uid} "$@"'.format(uid=apps.APP_UID)
    return {
        "name": "prepare-data",
        "image": plan.app_image,
        "imagePullPolicy": plan.settings.image_pull_policy,
        "command": ["sh", "-c", script, "prepare-data", *paths],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": "/data"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }


def data_claim(plan: SessionPlan) -> dict[str, Any]:
    """The user's volume for this app (-v). Not owned by the session: it outlives it."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": plan.settings.persist_size}},
    }
    if plan.settings.storage_class:
        spec["storageClassName"] = plan.settings.storage_class
    lbl = plan.names.labels(n.ROLE_DATA)
    del lbl[labels.SESSION]  # shared by sessions: belongs to none of them
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": plan.names.pvc, "namespace": plan.names.namespace, "labels": lbl},
        "spec": spec,
    }


def viewer_env(plan: SessionPlan, target: Target, *, display: str, pulse_socket: str | None, secret_dir: str,
               xauthority: str | None) -> dict[str, str]:
    """The viewer's environment (images/viewer's contract, kod.apps), for a pod or a container."""
    opts = plan.options
    env: dict[str, str | int] = {
        apps.ENV_TARGET_HOST: target.host,
        apps.ENV_TARGET_SSH_PORT: target.ssh_port,
        apps.ENV_ENCRYPT: "1" if opts.secure else "0",
        apps.ENV_VNC_PORT: apps.VNC_PORT,
        apps.ENV_AUDIO_PORT: apps.AUDIO_PORT,
        apps.ENV_QUALITY: opts.quality,
        apps.ENV_COMPRESSION: opts.compression,
        apps.ENV_SSH_KEY_FILE: f"{secret_dir}/{K_CLIENT_KEY}",
        apps.ENV_KNOWN_HOSTS_FILE: f"{secret_dir}/{K_KNOWN_HOSTS}",
        apps.ENV_VNC_PASSWORD_FILE: f"{secret_dir}/{K_VNC_PASSWORD}",
        apps.ENV_CONNECT_TIMEOUT: max(1, round(opts.timeout)),
        "DISPLAY": display,
    }
    if target.vnc_port is not None:
        env[apps.ENV_TARGET_VNC_PORT] = target.vnc_port
        env[apps.ENV_TARGET_VNC_HOST] = target.vnc_host or target.host
    if pulse_socket:
        env[apps.ENV_PULSE_SOCKET] = pulse_socket
        env[apps.ENV_AUDIO_LATENCY_MS] = apps.AUDIO_LATENCY_MS
    if xauthority:
        env["XAUTHORITY"] = xauthority
    return {k: str(v) for k, v in env.items()}


def viewer_pod(
    plan: SessionPlan,
    owner: dict[str, Any],
    target: Target,
    *,
    node: str,
    display: str,
    pulse_dir: str | None,
    pulse_socket_name: str = "native",
    with_xauthority: bool,
    groups: list[int] | None = None,
) -> dict[str, Any]:
    """The viewer as a pod on the user's virtual node: pinned there by name, and by a selector
    and toleration that only that node satisfies. It mounts only the X socket directory and the
    kod PulseAudio socket's directory from the desktop: no privileges, no host network. `groups`
    are supplementary groups (the one that may reach the sound socket)."""
    secret_dir = apps.VIEWER_SECRET_DIR
    keys = list(VIEWER_KEYS) + ([K_XAUTHORITY] if with_xauthority else [])
    items = [{"key": k, "path": k} for k in keys]
    env = viewer_env(
        plan, target, display=display,
        pulse_socket=f"{VIEWER_PULSE_DIR}/{pulse_socket_name}" if pulse_dir else None,
        secret_dir=secret_dir,
        xauthority=f"{secret_dir}/{K_XAUTHORITY}" if with_xauthority else None,
    )
    # Host paths read-only: the desktop's Docker sidecar mounts them no other way (connecting to
    # a socket needs no write access to its directory).
    mounts = [
        {"name": "session", "mountPath": secret_dir, "readOnly": True},
        {"name": "x11", "mountPath": X11_DIR, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "session", "secret": {"secretName": plan.names.viewer_secret, "items": items, "defaultMode": 0o440}},
        {"name": "x11", "hostPath": {"path": X11_DIR, "type": "Directory"}},
    ]
    if pulse_dir:
        mounts.append({"name": "pulse", "mountPath": VIEWER_PULSE_DIR, "readOnly": True})
        volumes.append({"name": "pulse", "hostPath": {"path": pulse_dir, "type": "Directory"}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": plan.metadata(plan.names.viewer, n.ROLE_VIEWER, owner),
        "spec": {
            "nodeName": node,
            "nodeSelector": {labels.NODE_TYPE: labels.VIRTUAL_KUBELET, labels.DESKTOP_OF: plan.names.user},
            "tolerations": [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists",
                             "effect": labels.VIRTUAL_NODE_TAINT_EFFECT}],
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"fsGroup": apps.APP_UID, **({"supplementalGroups": list(groups)} if groups else {})},
            "containers": [{
                "name": "viewer",
                "image": plan.viewer_image,
                "imagePullPolicy": "IfNotPresent",
                "env": _env(dict(env)),
                "volumeMounts": mounts,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "privileged": False},
            }],
            "volumes": volumes,
        },
    }
