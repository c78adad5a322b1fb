# POST /v1/pods
#   Request: PodCreateRequest (JSON).
#   Response: 201 PodStatus when created; 200 PodStatus when a pod with this uid exists already
#   (create is idempotent). `sidecar` names the sidecar the routing rules picked.
#   Status codes: 400 malformed JSON, failed validation, or no sidecar takes the pod; 401 bad
#   token; 403 the desktop policy refuses the pod; 409 same name, other uid; 503 sidecar down.
"""Create: validate, pick a sidecar, forward the body as received."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model, read_model
from kod.log import get_logger, pod_context
from kod.wire import PodCreateRequest, PodStatus

from interlink.state import SIDECARS, STORE

log = get_logger(__name__)


async def create_pod(request: web.Request) -> web.Response:
    req = await read_model(request, PodCreateRequest)
    meta = req.pod.metadata
    bound = log.bind(**pod_context(meta.namespace, meta.name, meta.uid))
    # A name a sidecar already holds stays there (that sidecar answers idempotency and conflicts
    # consistently); a new pod goes where the rules say.
    store = request.app[STORE]
    sidecars = request.app[SIDECARS]
    held = store.locate(meta.namespace, meta.name)
    sidecar = sidecars.by_name[held] if held else sidecars.for_new_pod(req.pod)
    status, pod = await sidecar.api.call("POST", "/v1/pods", PodStatus, data=await request.read())
    store.record(sidecar.name, pod)
    bound.info("pod created" if status == 201 else "pod exists", sidecar=sidecar.name, phase=pod.phase)
    return json_model(pod.model_copy(update={"sidecar": sidecar.name}), status=status)
