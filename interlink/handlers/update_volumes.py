# PUT /v1/pods/{namespace}/{name}/volumes
#   Request: VolumeUpdate (JSON): the pod's uid and the new contents of some of its content volumes.
#   Response: 200 VolumeUpdateResult from the sidecar that holds the pod.
#   Status codes: 400 malformed body, a volume that is not a content volume, or a sidecar that
#   does not update volumes; 401 bad token; 404 no such pod (or not with this uid); 503 the
#   pod's volumes are not set up, or the sidecar cannot be reached.
"""Update volumes: validate, forward the body as received to the sidecar that holds the pod."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model, read_model
from kod.log import get_logger, pod_context
from kod.wire import VolumeUpdate, VolumeUpdateResult

from interlink.handlers.common import pod_ref
from interlink.state import locate

log = get_logger(__name__)


async def update_volumes(request: web.Request) -> web.Response:
    namespace, name = pod_ref(request)
    update = await read_model(request, VolumeUpdate)
    sidecar = await locate(request.app, namespace, name, update.uid)
    _, result = await sidecar.api.call(
        "PUT", f"/v1/pods/{namespace}/{name}/volumes", VolumeUpdateResult, data=await request.read()
    )
    if result.updated:
        log.info("pod volumes updated", sidecar=sidecar.name, volumes=result.updated,
                 **pod_context(namespace, name, update.uid))
    return json_model(result)
