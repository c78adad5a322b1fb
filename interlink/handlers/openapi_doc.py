# GET /openapi.json
#   Request: no body; no token needed (the document holds no secret).
#   Response: 200 application/json, the committed OpenAPI 3.1 document of this API.
#   Status codes: 200.
"""The API's own description."""

from __future__ import annotations

from aiohttp import web

from interlink.openapi import SPEC_PATH


async def openapi_doc(request: web.Request) -> web.Response:
    return web.Response(body=SPEC_PATH.read_bytes(), content_type="application/json")
