"""The route table of the InterLink API, in one place: every operation of every service that
speaks it (interlink and the sidecars), with what OpenAPI needs to describe it.

    add_routes(app, INTERLINK, {"ping": ping, "createPod": create_pod, ...})   # each service
    open_paths(INTERLINK)            # the paths that need no token, for bearer_auth_middleware

`interlink.openapi` generates the OpenAPI document from this table and the models of `kod.wire`;
each operation says which services serve it (`x-served-by` in the document). `add_routes` refuses
a handler map that misses an operation or has one the table does not know, and a unit test
(tests/unit/test_openapi.py) checks every service's routes against the committed document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from kod import wire

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The services that speak the API.
INTERLINK = "interlink"
SIDECAR = "sidecar"
BOTH = frozenset({INTERLINK, SIDECAR})

JSON = "application/json"
TEXT = "text/plain"
#: A response that switches protocols (101): no body; `kod.streams` frames what follows.
UPGRADE = ""


@dataclass(frozen=True)
class Operation:
    """One operation of the API: its route, and enough to write its OpenAPI entry."""

    method: str
    path: str
    operation_id: str
    summary: str
    #: Success answers: status -> (description, schema model or None, media type).
    responses: dict[str, tuple[str, type[BaseModel] | None, str]]
    #: Extra error answers (an ErrorBody): status -> description.
    errors: dict[str, str] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: tuple[str, ...] = ()
    authenticated: bool = True
    served_by: frozenset[str] = BOTH
    #: Services that may leave it out (an optional extra, as virtual-kubelet's stats are): their
    #: callers take a 404 as "not offered".
    optional_for: frozenset[str] = frozenset()


P = wire.API_PREFIX
POD = P + "/pods/{namespace}/{name}"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        P + "/ping",
        "ping",
        "What the node offers: capacity, taints, labels, and the health of each sidecar.",
        {"200": ("At least one sidecar answers.", wire.NodeInfo, JSON)},
    ),
    Operation(
        "post",
        P + "/pods",
        "createPod",
        "Run a pod. Idempotent by uid: creating a pod whose uid exists returns its status.",
        {
            "201": ("The pod was created.", wire.PodStatus, JSON),
            "200": ("A pod with this uid already exists; its status.", wire.PodStatus, JSON),
        },
        errors={
            "400": "Malformed JSON, a body that fails validation, or no sidecar accepts the pod.",
            "403": "The desktop's policy refuses the pod (privileged, host paths, ...).",
            "409": "A pod with this namespace and name but another uid exists.",
        },
        body=wire.PodCreateRequest,
    ),
    Operation(
        "get",
        P + "/pods",
        "listPods",
        "The latest status of every pod.",
        {"200": ("Every pod known.", wire.PodStatusList, JSON)},
    ),
    Operation(
        "get",
        POD,
        "getPod",
        "The current status of one pod.",
        {"200": ("The pod's status.", wire.PodStatus, JSON)},
        errors={"404": "No such pod."},
        path_params=("namespace", "name"),
    ),
    Operation(
        "delete",
        POD,
        "deletePod",
        "Stop a pod's containers (SIGTERM, then SIGKILL after the grace period) and remove them.",
        {"200": ("The pod's final status.", wire.PodStatus, JSON)},
        errors={"400": "Bad query parameters.", "404": "No such pod (or not with this uid)."},
        query=wire.DeleteOptions,
        path_params=("namespace", "name"),
    ),
    Operation(
        "put",
        POD + "/volumes",
        "updateVolumes",
        "Replace the contents of a running pod's Secret, ConfigMap, projected or downwardAPI volumes "
        "(each one named, as a whole), atomically as the kubelet does: the containers see either the old "
        "files or the new ones. subPath mounts keep what they had. A sidecar that cannot update volumes "
        "answers 400.",
        {"200": ("What changed.", wire.VolumeUpdateResult, JSON)},
        errors={
            "400": "A volume that is not a content volume of the pod, or the sidecar does not update volumes.",
            "404": "No such pod (or not with this uid).",
            "503": "The pod's volumes are not set up (yet, or any more).",
        },
        body=wire.VolumeUpdate,
        path_params=("namespace", "name"),
    ),
    Operation(
        "get",
        POD + "/containers/{container}/logs",
        "podLogs",
        "A container's log as text, streamed while the container runs when follow=true.",
        {"200": ("The log (chunked when following).", None, TEXT)},
        errors={"400": "Bad query parameters.", "404": "No such pod or container."},
        query=wire.LogOptions,
        path_params=("namespace", "name", "container"),
    ),
    Operation(
        "get",
        POD + "/containers/{container}/exec",
        "execContainer",
        "Run a command (an argv, never given to a shell) in a running container: a WebSocket of "
        "kod.streams channels (0 stdin, 1 stdout, 2 stderr, 3 the final StreamStatus with the exit "
        "code, 4 resize, 255 a channel's end).",
        {"101": ("Switching to the WebSocket.", None, UPGRADE)},
        errors={"400": "Bad query, or the container is not running.", "404": "No such pod or container."},
        query=wire.ExecOptions,
        path_params=("namespace", "name", "container"),
    ),
    Operation(
        "get",
        POD + "/containers/{container}/attach",
        "attachContainer",
        "Attach to a running container's main process: the channels of execContainer (the "
        "container's own tty setting applies; the StreamStatus carries no exit code).",
        {"101": ("Switching to the WebSocket.", None, UPGRADE)},
        errors={"400": "Bad query, or the container is not running.", "404": "No such pod or container."},
        query=wire.ExecOptions,
        path_params=("namespace", "name", "container"),
    ),
    Operation(
        "get",
        POD + "/portforward",
        "portForward",
        "One TCP connection to a port on the pod's localhost (inside its network namespace): a "
        "WebSocket of kod.streams channels (0 data both ways, 1 error, 255 [0] a side's EOF).",
        {"101": ("Switching to the WebSocket.", None, UPGRADE)},
        errors={
            "400": "Bad port, nothing listens on it, or the pod's sandbox is not running.",
            "404": "No such pod.",
        },
        query=wire.PortForwardOptions,
        path_params=("namespace", "name"),
    ),
    Operation(
        "get",
        P + "/watch",
        "watch",
        "Pushed status: one WatchEvent per line. A SYNC with every pod first, then STATUS and "
        f"DELETED events as they happen, and a HEARTBEAT every {wire.WATCH_HEARTBEAT_SECONDS:g} s "
        "of silence. Reconnect (and get a fresh SYNC) when the stream ends or stays silent for "
        "three heartbeat intervals.",
        {"200": ("Newline-delimited JSON, one WatchEvent per line.", wire.WatchEvent, wire.NDJSON)},
    ),
    Operation(
        "get",
        P + "/stats",
        "stats",
        "Resource usage now: the machine's CPU time, memory and disk, and each running container's "
        "CPU time and memory (cumulative counters and gauges, as a kubelet reads them; rates are the "
        "reader's). interlink merges its sidecars' reports; a sidecar may not offer it (404).",
        {"200": ("What was measured; `errors` names what could not be.", wire.UsageReport, JSON)},
        errors={"404": "This sidecar does not measure usage."},
        optional_for=frozenset({SIDECAR}),
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "This document (served by interlink).",
        {"200": ("The OpenAPI 3.1 document.", None, JSON)},
        authenticated=False,
        served_by=frozenset({INTERLINK}),
    ),
    Operation(
        "get",
        "/healthz",
        "healthz",
        "A sidecar's health, for container health checks: whether its container engine is "
        "connected and synced. Carries no data.",
        {
            "200": ('"ok": the engine is connected and synced.', None, TEXT),
            "503": ("The engine is not connected or not synced yet; the reason.", None, TEXT),
        },
        authenticated=False,
        served_by=frozenset({SIDECAR}),
    ),
)


def operations(service: str) -> tuple[Operation, ...]:
    """The operations `service` serves, in table order."""
    ops = tuple(op for op in OPERATIONS if service in op.served_by)
    if not ops:
        raise ValueError(f"unknown service {service!r}; the table knows {sorted(set().union(*(o.served_by for o in OPERATIONS)))}")
    return ops


def open_paths(service: str) -> frozenset[str]:
    """The paths of `service` that need no token."""
    return frozenset(op.path for op in operations(service) if not op.authenticated)


def add_routes(app: web.Application, service: str, handlers: Mapping[str, Handler]) -> None:
    """Register `handlers` (operation id -> handler) for every operation `service` serves.
    Raises ValueError when an operation has no handler or a handler no operation: a route
    that is not in the table is a route that is not in the document."""
    ops = operations(service)
    wanted = {op.operation_id for op in ops}
    optional = {op.operation_id for op in ops if service in op.optional_for}
    missing, unknown = sorted(wanted - optional - set(handlers)), sorted(set(handlers) - wanted)
    if missing or unknown:
        raise ValueError(f"{service}'s handlers do not match kod.routes: missing {missing}, not in the table {unknown}")
    for op in ops:
        if op.operation_id not in handlers:
            continue
        if op.method == "get":
            app.router.add_get(op.path, handlers[op.operation_id])  # HEAD too, as aiohttp does
        else:
            app.router.add_route(op.method.upper(), op.path, handlers[op.operation_id])
