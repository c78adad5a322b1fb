# GET /v1/stats
#   Request: no body, no query.
#   Response: 200 UsageReport: every sidecar's pods, asked at once; the node's figures from the
#   first sidecar (in config order) that measured them (sidecars share the desktop's machine).
#   A sidecar that does not measure usage (404) adds nothing; one that cannot be reached adds a
#   line to `errors` and the rest is still served.
#   Status codes: 200; 401 bad token.
"""Stats: the sidecars' usage reports, merged."""

from __future__ import annotations

import asyncio

from aiohttp import web

from kod import errors
from kod.http import json_model
from kod.wire import API_PREFIX, UsageReport

from interlink.sidecar import Sidecar
from interlink.state import SIDECARS


async def _ask(sidecar: Sidecar) -> UsageReport | None:
    try:
        _, report = await sidecar.api.call("GET", f"{API_PREFIX}/stats", UsageReport)
    except errors.NotFound:
        return None
    return report


async def stats(request: web.Request) -> web.Response:
    sidecars = list(request.app[SIDECARS].by_name.values())
    answers = await asyncio.gather(*(_ask(s) for s in sidecars), return_exceptions=True)
    merged = UsageReport()
    for sidecar, answer in zip(sidecars, answers):
        if isinstance(answer, errors.KodError):
            merged.errors.append(f"sidecar {sidecar.name!r}: {answer}")
        elif isinstance(answer, BaseException):
            raise answer
        elif answer is not None:
            merged.pods.extend(answer.pods)
            merged.errors.extend(f"sidecar {sidecar.name!r}: {e}" for e in answer.errors)
            if merged.node is None:
                merged.node = answer.node
    return json_model(merged)
