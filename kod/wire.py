"""The InterLink wire format: every body exchanged between vk_bridge, interlink and the sidecars.

This module is the single source of truth. `interlink/openapi.json` is generated from it
(`python -m interlink.openapi`) and a test fails when the committed spec drifts from these models.

The API (the same on interlink and on every sidecar; interlink routes to sidecars):

    GET    /v1/ping                                       -> NodeInfo
    POST   /v1/pods                 PodCreateRequest      -> 201 PodStatus (200 if the uid exists)
    GET    /v1/pods                                       -> PodStatusList
    GET    /v1/pods/{namespace}/{name}                    -> PodStatus
    DELETE /v1/pods/{namespace}/{name}?<DeleteOptions>    -> PodStatus (final)
    PUT    /v1/pods/{namespace}/{name}/volumes  VolumeUpdate  -> VolumeUpdateResult
    GET    /v1/pods/{namespace}/{name}/containers/{container}/logs?<LogOptions>
                                                          -> text/plain, streamed when follow
    GET    /v1/watch                                      -> application/x-ndjson of WatchEvent
    GET    /v1/pods/{namespace}/{name}/containers/{container}/exec?<ExecOptions>    -> 101 WebSocket
    GET    /v1/pods/{namespace}/{name}/containers/{container}/attach?<ExecOptions>  -> 101 WebSocket
    GET    /v1/pods/{namespace}/{name}/portforward?<PortForwardOptions>            -> 101 WebSocket
           (the WebSockets' messages are framed by `kod.streams`: a channel byte, then the payload)

Every request carries `Authorization: Bearer <token>` and may carry `X-Request-Id`, which each
hop logs and forwards. Errors are `ErrorBody` with the status codes of `kod.errors`.

Models that mirror Kubernetes objects (`Pod`, `PodSpec`, `Container`, ...) use Kubernetes' JSON
field names (camelCase) so that a Pod serialised by the Kubernetes client validates as is. They
keep only the fields the desktop runtime honours or must refuse; unknown Kubernetes fields are
ignored. Security-relevant fields are all modelled, so that the sidecar can refuse what it does not
allow instead of silently dropping it. Envelope models of our own forbid unknown fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_PREFIX = "/v1"
REQUEST_ID_HEADER = "X-Request-Id"
#: Content type of the watch stream: one JSON document (a WatchEvent) per line.
NDJSON = "application/x-ndjson"
#: How often a watch stream sends a HEARTBEAT when nothing else happens. Clients treat a stream
#: that stays silent for three intervals as dead and reconnect.
WATCH_HEARTBEAT_SECONDS = 10.0


class Envelope(BaseModel):
    """Base of the project's own request/response bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class KubeModel(BaseModel):
    """Base of the Kubernetes mirrors: Kubernetes JSON names, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Kubernetes mirrors: what a pod asks for.
# --------------------------------------------------------------------------------------------


class ObjectMeta(KubeModel):
    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(default="default", min_length=1, max_length=63)
    uid: str = Field(min_length=1, description="The pod's uid; identifies one incarnation of a name.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    deletionGracePeriodSeconds: int | None = None


class KeyToPath(KubeModel):
    key: str
    path: str
    mode: int | None = None


class SecretVolumeSource(KubeModel):
    secretName: str | None = None
    items: list[KeyToPath] | None = None
    defaultMode: int | None = None
    optional: bool | None = None


class ConfigMapVolumeSource(KubeModel):
    name: str | None = None
    items: list[KeyToPath] | None = None
    defaultMode: int | None = None
    optional: bool | None = None


class EmptyDirVolumeSource(KubeModel):
    medium: str | None = Field(default=None, description='"" (disk) or "Memory" (tmpfs).')
    sizeLimit: str | None = None


class PersistentVolumeClaimVolumeSource(KubeModel):
    claimName: str
    readOnly: bool | None = None


class HostPathVolumeSource(KubeModel):
    path: str
    type: str | None = None


class Volume(KubeModel):
    """A pod volume. Secret, configMap, projected and downwardAPI contents arrive resolved in
    `PodCreateRequest.volumes`; the source fields here say which kind it is. A volume with none
    of the supported sources set is of an unsupported kind and is refused."""

    name: str
    emptyDir: EmptyDirVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    configMap: ConfigMapVolumeSource | None = None
    projected: dict[str, Any] | None = None
    downwardAPI: dict[str, Any] | None = None
    persistentVolumeClaim: PersistentVolumeClaimVolumeSource | None = None
    hostPath: HostPathVolumeSource | None = None


class VolumeMount(KubeModel):
    name: str
    mountPath: str
    subPath: str | None = None
    readOnly: bool | None = None
    mountPropagation: str | None = None


class ContainerPort(KubeModel):
    containerPort: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: str = "TCP"
    hostPort: int | None = Field(default=None, description="Refused by the desktop policy.")
    hostIP: str | None = None


class ResourceRequirements(KubeModel):
    limits: dict[str, str | int | float] = Field(default_factory=dict)
    requests: dict[str, str | int | float] = Field(default_factory=dict)


class Capabilities(KubeModel):
    add: list[str] | None = None
    drop: list[str] | None = None


class SecurityContext(KubeModel):
    """Container security context (fields that matter on the desktop)."""

    privileged: bool | None = None
    capabilities: Capabilities | None = None
    runAsUser: int | None = None
    runAsGroup: int | None = None
    runAsNonRoot: bool | None = None
    readOnlyRootFilesystem: bool | None = None
    allowPrivilegeEscalation: bool | None = None
    procMount: str | None = None
    seccompProfile: dict[str, Any] | None = None
    appArmorProfile: dict[str, Any] | None = None
    seLinuxOptions: dict[str, Any] | None = None


class PodSecurityContext(KubeModel):
    runAsUser: int | None = None
    runAsGroup: int | None = None
    runAsNonRoot: bool | None = None
    fsGroup: int | None = None
    supplementalGroups: list[int] | None = None
    sysctls: list[dict[str, Any]] | None = Field(default=None, description="Refused by the policy.")
    seccompProfile: dict[str, Any] | None = None


class Probe(KubeModel):
    """A probe as the pod spec gives it; the sidecar applies the kubelet's defaults."""

    exec: dict[str, Any] | None = None
    httpGet: dict[str, Any] | None = None
    tcpSocket: dict[str, Any] | None = None
    grpc: dict[str, Any] | None = Field(default=None, description="grpc.health.v1 Check on `port` (`service`).")
    terminationGracePeriodSeconds: int | None = Field(
        default=None, description="Liveness and startup probes: the grace period of the kill they cause."
    )
    initialDelaySeconds: int | None = None
    periodSeconds: int | None = None
    timeoutSeconds: int | None = None
    failureThreshold: int | None = None
    successThreshold: int | None = None


class LifecycleHandler(KubeModel):
    """One lifecycle hook: exactly one of exec, httpGet, sleep (tcpSocket is accepted and, as on
    a kubelet, does nothing)."""

    exec: dict[str, Any] | None = None
    httpGet: dict[str, Any] | None = None
    tcpSocket: dict[str, Any] | None = None
    sleep: dict[str, Any] | None = None


class Lifecycle(KubeModel):
    postStart: LifecycleHandler | None = None
    preStop: LifecycleHandler | None = None


class Container(KubeModel):
    """A container as the pod spec gives it. Its env, command and args arrive resolved (all
    `valueFrom`/`envFrom` looked up, `$(VAR)` expanded) in `PodCreateRequest.containers`."""

    name: str
    image: str
    imagePullPolicy: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    workingDir: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    volumeMounts: list[VolumeMount] = Field(default_factory=list)
    volumeDevices: list[dict[str, Any]] | None = Field(default=None, description="Refused.")
    securityContext: SecurityContext | None = None
    readinessProbe: Probe | None = None
    livenessProbe: Probe | None = None
    startupProbe: Probe | None = None
    lifecycle: Lifecycle | None = None
    terminationMessagePath: str | None = Field(
        default=None, description="Where the container may write its termination message (the API's default: /dev/termination-log)."
    )
    terminationMessagePolicy: str | None = Field(default=None, description='"File" (default) or "FallbackToLogsOnError".')
    stdin: bool | None = None
    tty: bool | None = None
    restartPolicy: str | None = Field(default=None, description='"Always" marks a sidecar init container.')


class PodSpec(KubeModel):
    nodeName: str | None = None
    containers: list[Container] = Field(min_length=1)
    initContainers: list[Container] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    terminationGracePeriodSeconds: int | None = None
    activeDeadlineSeconds: int | None = None
    hostNetwork: bool | None = None
    hostPID: bool | None = None
    hostIPC: bool | None = None
    hostUsers: bool | None = None
    shareProcessNamespace: bool | None = None
    securityContext: PodSecurityContext | None = None
    hostname: str | None = None
    subdomain: str | None = None
    hostAliases: list[dict[str, Any]] | None = None
    dnsPolicy: str | None = None
    runtimeClassName: str | None = None


class Pod(KubeModel):
    apiVersion: str = "v1"
    kind: str = "Pod"
    metadata: ObjectMeta
    spec: PodSpec


# --------------------------------------------------------------------------------------------
# What the virtual kubelet resolves for the sidecar.
# --------------------------------------------------------------------------------------------


def _check_relative_path(value: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or ".." in parts:
        raise ValueError(f"path {value!r} must be relative and must not contain '..'")
    return value


class FileItem(Envelope):
    """One file of a resolved volume."""

    path: str = Field(description="Path relative to the volume root; no '..', not absolute.")
    data: str = Field(description="The file's bytes, base64-encoded (standard alphabet).")
    mode: int | None = Field(default=None, ge=0, le=0o777, description="Permission bits; else the volume's default.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _check_relative_path(value)


class ResolvedVolume(Envelope):
    """The contents of a Secret, ConfigMap, projected or downwardAPI volume, as the kubelet
    would write them (items and modes applied)."""

    name: str = Field(description="The pod volume's name.")
    files: list[FileItem] = Field(default_factory=list)
    defaultMode: int = Field(default=0o644, ge=0, le=0o777)


class EnvVar(Envelope):
    name: str
    value: str


class ResolvedContainer(Envelope):
    """A container's environment, command and args after every reference was resolved.
    `command`/`args` are null when the pod did not set them (the image's ENTRYPOINT/CMD apply)."""

    name: str
    env: list[EnvVar] = Field(default_factory=list)
    command: list[str] | None = None
    args: list[str] | None = None


class ClaimRef(Envelope):
    """A PersistentVolumeClaim the pod mounts, as the virtual kubelet found it in the API."""

    name: str = Field(description="The claim's name (the pod's namespace).")
    uid: str = Field(min_length=1, description="The claim's uid: a claim deleted and made again is another claim.")


class PodCreateRequest(Envelope):
    """POST /v1/pods. Creating a pod whose uid already exists returns its status (idempotent)."""

    pod: Pod
    containers: list[ResolvedContainer] = Field(
        default_factory=list, description="One entry per init and main container, by name."
    )
    volumes: list[ResolvedVolume] = Field(default_factory=list)
    claims: list[ClaimRef] = Field(
        default_factory=list,
        description="Every PersistentVolumeClaim the pod mounts, confirmed to exist by the virtual kubelet; "
        "a sidecar makes storage only for these.",
    )


class VolumeUpdate(Envelope):
    """PUT /v1/pods/{namespace}/{name}/volumes: the new contents of some of a running pod's
    Secret, ConfigMap, projected and downwardAPI volumes (a ConfigMap or Secret changed, a token
    was refreshed), as the kubelet rewrites them. Each volume named is replaced as a whole,
    atomically (a file left out is removed); volumes not named are left as they are."""

    uid: str = Field(min_length=1, description="The pod's uid: an update for another incarnation of the name is refused (404).")
    volumes: list[ResolvedVolume] = Field(default_factory=list)


class VolumeUpdateResult(Envelope):
    """What an update changed."""

    updated: list[str] = Field(default_factory=list, description="The volumes whose files changed.")
    unchanged: list[str] = Field(default_factory=list, description="The volumes that already held these contents.")


# --------------------------------------------------------------------------------------------
# Status: what the sidecar reports.
# --------------------------------------------------------------------------------------------

PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


class ContainerStateWaiting(KubeModel):
    reason: str | None = None
    message: str | None = None


class ContainerStateRunning(KubeModel):
    startedAt: datetime | None = None


class ContainerStateTerminated(KubeModel):
    exitCode: int
    signal: int | None = None
    reason: str | None = Field(default=None, description='"Completed", "Error", "OOMKilled", ...')
    message: str | None = None
    startedAt: datetime | None = None
    finishedAt: datetime | None = None
    containerID: str | None = None


class ContainerState(KubeModel):
    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(KubeModel):
    name: str
    state: ContainerState = Field(default_factory=ContainerState)
    lastState: ContainerState = Field(default_factory=ContainerState)
    ready: bool = False
    started: bool | None = None
    restartCount: int = 0
    image: str = ""
    imageID: str = ""
    containerID: str | None = None


class PodEvent(Envelope):
    """Something that happened to the pod on the node, for a Kubernetes Event (what the kubelet
    reports: Unhealthy, Killing, FailedPostStartHook, ...). The same (type, reason, message)
    happening again counts up one entry, as the kubelet's event correlator does."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    count: int = Field(default=1, ge=1)
    firstTimestamp: datetime
    lastTimestamp: datetime


class PodStatus(Envelope):
    """A pod as the sidecar sees it. The virtual kubelet derives the pod's conditions from it."""

    namespace: str
    name: str
    uid: str
    phase: PodPhase = "Pending"
    reason: str | None = Field(default=None, description='E.g. "Forbidden" when the policy refused the pod.')
    message: str | None = None
    podIP: str | None = None
    startTime: datetime | None = None
    initContainerStatuses: list[ContainerStatus] = Field(default_factory=list)
    containerStatuses: list[ContainerStatus] = Field(default_factory=list)
    sidecar: str | None = Field(default=None, description="Which sidecar runs the pod (set by interlink).")
    events: list[PodEvent] = Field(
        default_factory=list, description="The pod's most recent events (a bounded list), oldest first."
    )
    version: int = Field(default=0, description="Increases with every change of this pod's status.")


class PodStatusList(Envelope):
    items: list[PodStatus] = Field(default_factory=list)


class WatchEvent(Envelope):
    """One line of GET /v1/watch.

    The stream opens with one SYNC event carrying every pod the plugin knows (`pods`); after it,
    STATUS events carry a changed pod (`pod`), DELETED events a pod that is gone (`pod`, with its
    last status), and HEARTBEAT events nothing. A client that reconnects gets a fresh SYNC, so a
    missed event is never lost for good.
    """

    type: Literal["SYNC", "STATUS", "DELETED", "HEARTBEAT"]
    pod: PodStatus | None = None
    pods: list[PodStatus] | None = None


class LogOptions(Envelope):
    """Query parameters of the logs endpoint, as `kubectl logs` passes them to a kubelet."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tailLines: int | None = Field(default=None, ge=0)
    limitBytes: int | None = Field(default=None, ge=1)
    sinceSeconds: int | None = Field(default=None, ge=1)
    sinceTime: datetime | None = None


class DeleteOptions(Envelope):
    """Query parameters of DELETE /v1/pods/{namespace}/{name}."""

    uid: str | None = Field(
        default=None,
        min_length=1,
        description="Delete only this incarnation of the name; a pod with another uid answers 404.",
    )
    gracePeriodSeconds: int | None = Field(
        default=None,
        ge=0,
        description="Seconds between SIGTERM and SIGKILL; 0 kills at once; unset uses the pod's own.",
    )


class Taint(KubeModel):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class SidecarHealth(Envelope):
    name: str
    ok: bool
    message: str | None = None


class NodeInfo(Envelope):
    """GET /v1/ping: what the node offers. Quantities use Kubernetes notation ("4", "8Gi")."""

    capacity: dict[str, str] = Field(default_factory=dict)
    allocatable: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    sidecars: list[SidecarHealth] = Field(default_factory=list)
    version: str = ""


class ErrorBody(Envelope):
    """Every non-2xx answer. `error` is a code of `kod.errors` (NotFound, InvalidInput, ...)."""

    error: str
    message: str
    requestId: str | None = None


#: Every model exported to the OpenAPI spec, by schema name.
SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    PodCreateRequest,
    VolumeUpdate,
    VolumeUpdateResult,
    PodStatus,
    PodStatusList,
    WatchEvent,
    LogOptions,
    DeleteOptions,
    NodeInfo,
    ErrorBody,
)


# --- streams: exec, attach, port-forward (issue 10) ---------------------------------------------
# These operations upgrade to a WebSocket whose binary messages are framed by `kod.streams` (one
# channel byte, then the payload); the models below are their query strings and final status.


#: Headers of a stream refused before its upgrade: the error's message (percent-encoded) and
#: code, since a WebSocket client does not read the ErrorBody of a refused upgrade.
STREAM_ERROR_HEADER = "X-Kod-Error"
STREAM_ERROR_CODE_HEADER = "X-Kod-Error-Code"


class ExecOptions(Envelope):
    """Query parameters of the exec and attach streams (`command` repeated, one per argument).
    `command` is an argv handed to the container engine as a list; no shell ever parses it."""

    command: list[str] = Field(default_factory=list, description="The argv to run (exec only; attach takes none).")
    stdin: bool = Field(default=False, description="Carry the caller's stdin (channel 0).")
    stdout: bool = Field(default=True, description="Carry the process's stdout (channel 1).")
    stderr: bool = Field(default=True, description="Carry its stderr (channel 2; merged into stdout with a tty).")
    tty: bool = Field(default=False, description="Give the process a terminal; resizes arrive on channel 4.")


class PortForwardOptions(Envelope):
    """Query parameters of the port-forward stream: one stream carries one TCP connection."""

    port: int = Field(ge=1, le=65535, description="The port, dialled on 127.0.0.1 inside the pod's network namespace.")


class StreamStatus(Envelope):
    """The last message of an exec or attach stream (channel 3): how it ended."""

    exitCode: int | None = Field(default=None, description="The process's exit code (None: not known, as for attach).")
    message: str | None = Field(default=None, description="Why the stream failed, when it did (no exit code then).")


SCHEMA_MODELS = SCHEMA_MODELS + (ExecOptions, PortForwardOptions, StreamStatus)


# --- resource usage: `kubectl top` (issue 10) -------------------------------------------------
# What a sidecar measured of its pods and of the machine, as raw cumulative counters and gauges;
# vk_bridge turns them into the kubelet's Summary API and /metrics/resource (vk_bridge.stats).


class CpuUsage(Envelope):
    """Cumulative CPU time: the counter a rate is computed from (by the reader, as from a kubelet)."""

    usageCoreNanoSeconds: int = Field(ge=0, description="CPU time used since the start, in core-nanoseconds.")


class MemoryUsage(Envelope):
    """Memory, as the kubelet (cAdvisor) reads it from a cgroup."""

    usageBytes: int | None = Field(default=None, ge=0, description="All memory charged, page cache included.")
    workingSetBytes: int | None = Field(
        default=None, ge=0, description="usageBytes less inactive file pages: what `kubectl top` shows."
    )
    rssBytes: int | None = Field(default=None, ge=0, description="Anonymous memory (and swap cache).")
    availableBytes: int | None = Field(default=None, ge=0, description="What is left before the limit (node: MemAvailable).")
    pageFaults: int | None = Field(default=None, ge=0, description="Page faults since the start.")
    majorPageFaults: int | None = Field(default=None, ge=0, description="Major page faults since the start.")


class NetworkUsage(Envelope):
    """Cumulative bytes and errors over the interfaces of a network namespace (loopback excluded)."""

    rxBytes: int = Field(ge=0, description="Bytes received.")
    rxErrors: int = Field(default=0, ge=0, description="Receive errors.")
    txBytes: int = Field(ge=0, description="Bytes sent.")
    txErrors: int = Field(default=0, ge=0, description="Send errors.")


class FsUsage(Envelope):
    """A filesystem's size and use (statvfs)."""

    capacityBytes: int = Field(ge=0, description="Its size.")
    availableBytes: int = Field(ge=0, description="What unprivileged writers can still use.")
    usedBytes: int = Field(ge=0, description="What is used.")
    inodes: int | None = Field(default=None, ge=0, description="Inodes in all.")
    inodesFree: int | None = Field(default=None, ge=0, description="Inodes free.")


class ContainerUsage(Envelope):
    """One running container of a pod, measured at `time`."""

    name: str = Field(description="The container's name in the pod spec.")
    startTime: datetime = Field(description="When this run of the container started.")
    time: datetime = Field(description="When the figures were read.")
    cpu: CpuUsage | None = Field(default=None, description="CPU time (None: not readable).")
    memory: MemoryUsage | None = Field(default=None, description="Memory (None: not readable).")


class PodUsage(Envelope):
    """A pod's running containers and its network namespace."""

    namespace: str
    name: str
    uid: str
    startTime: datetime | None = Field(default=None, description="When the pod's sandbox started.")
    time: datetime = Field(description="When the pod's figures were read.")
    containers: list[ContainerUsage] = Field(default_factory=list, description="Its running containers.")
    network: NetworkUsage | None = Field(default=None, description="Its network namespace's traffic.")


class NodeUsage(Envelope):
    """The machine the sidecar runs on, as a whole (not the sum of its pods)."""

    time: datetime = Field(description="When the figures were read.")
    startTime: datetime | None = Field(default=None, description="When the machine booted.")
    cpu: CpuUsage | None = Field(default=None, description="All CPUs' busy time (/proc/stat).")
    memory: MemoryUsage | None = Field(default=None, description="The machine's memory (/proc/meminfo).")
    fs: FsUsage | None = Field(default=None, description="The filesystem of the container engine's data.")


class UsageReport(Envelope):
    """GET /v1/stats: what a sidecar (or, merged, interlink) measured now."""

    node: NodeUsage | None = Field(default=None, description="The machine (None: not measured).")
    pods: list[PodUsage] = Field(default_factory=list, description="Every pod with a running container.")
    errors: list[str] = Field(
        default_factory=list, description="What could not be read (a pod, a sidecar); the rest is still served."
    )


SCHEMA_MODELS = SCHEMA_MODELS + (
    CpuUsage, MemoryUsage, NetworkUsage, FsUsage, ContainerUsage, PodUsage, NodeUsage, UsageReport,
)
