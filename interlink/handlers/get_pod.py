# GET /v1/pods/{namespace}/{name}
#   Request: no body.
#   Response: 200 PodStatus, fresh from the sidecar that holds the pod (`sidecar` names it).
#   Status codes: 400 a path part is not a Kubernetes name; 401 bad token; 404 no such pod;
#   503 the sidecar that holds it (or might) cannot be reached.
"""Get: ask the sidecar that holds the pod."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model
from kod.wire import PodStatus

from interlink.handlers.common import pod_ref
from interlink.state import locate


async def get_pod(request: web.Request) -> web.Response:
    namespace, name = pod_ref(request)
    sidecar = await locate(request.app, namespace, name)
    _, pod = await sidecar.api.call("GET", f"/v1/pods/{namespace}/{name}", PodStatus)
    return json_model(pod.model_copy(update={"sidecar": sidecar.name}))
