# DELETE /v1/pods/{namespace}/{name}?uid=&gracePeriodSeconds=   (query: DeleteOptions)
#   Request: no body.
#   Response: 200 PodStatus, the pod's final status, once the sidecar removed its containers.
#   Status codes: 400 bad query or path; 401 bad token; 404 no such pod (or not with this uid);
#   503 the sidecar cannot be reached.
"""Delete: forward to the sidecar that holds the pod; the grace period extends the timeout."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model, parse_query
from kod.log import get_logger, pod_context
from kod.wire import DeleteOptions, PodStatus

from interlink.handlers.common import pod_ref
from interlink.state import locate

log = get_logger(__name__)

#: When the caller gives no grace period, the pod's own applies (Kubernetes' default is 30 s,
#: but a pod may ask for more): allow this much on top of the sidecar's usual timeout.
_UNKNOWN_GRACE_SECONDS = 300


async def delete_pod(request: web.Request) -> web.Response:
    namespace, name = pod_ref(request)
    opts = parse_query(request, DeleteOptions)
    sidecar = await locate(request.app, namespace, name, opts.uid)
    grace = opts.gracePeriodSeconds if opts.gracePeriodSeconds is not None else _UNKNOWN_GRACE_SECONDS
    _, pod = await sidecar.api.call(
        "DELETE",
        f"/v1/pods/{namespace}/{name}",
        PodStatus,
        params=opts.model_dump(exclude_none=True),
        timeout=sidecar.settings.timeout_seconds + grace,
    )
    log.info("pod deleted", sidecar=sidecar.name, **pod_context(namespace, name, pod.uid))
    return json_model(pod.model_copy(update={"sidecar": sidecar.name}))
