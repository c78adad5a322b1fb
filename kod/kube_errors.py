"""Kubernetes API answers mapped to the `kod.errors` vocabulary, in one table.

| API server answer                  | raised                  | retried by `KubeClient` |
|------------------------------------|-------------------------|-------------------------|
| 400 BadRequest, 422 Invalid        | `InvalidInput`          | no                      |
| 401 Unauthorized                   | `Unauthorized` (+ hint) | no                      |
| 403 Forbidden                      | `Forbidden` (+ hint)    | no                      |
| 404 NotFound                       | `NotFound`              | no                      |
| 409 AlreadyExists, Conflict        | `Conflict`              | no                      |
| 410 Gone (Expired resourceVersion) | `Expired`               | no (a watch lists again)|
| 429 TooManyRequests                | `Unavailable`           | yes, after Retry-After  |
| 5xx but 501                        | `Unavailable`           | yes, after Retry-After  |
| 501 NotImplemented                 | `Unavailable`           | no (it will not change) |
| no connection, timeout, cut stream | `Unavailable` (+ hint)  | yes                     |
| any other 4xx (405, 406, 413, 415) | `InvalidInput`          | no                      |

Any other 4xx is `InvalidInput`: the request itself is wrong (a verb the resource does not have,
a body too large, a content type it does not take), so sending it again gets the same answer.
That is the rule `kod.errors.from_status` applies to every HTTP answer in the project (InterLink,
the sidecars), decided once there and used here. A 410 is its own class, not a `Conflict`: it
means "your resourceVersion is too old, list again", which no caller handles like a conflict.

Messages are the API server's own (`pods "x" not found`), prefixed with what was asked
(`GET /api/v1/...`).
"""

from __future__ import annotations

import json

from kod import errors

#: Longest Retry-After honoured; a server asking for more is retried after this many seconds.
MAX_RETRY_AFTER = 30.0

UNAUTHORIZED_HINT = "the API server refused the credentials: renew the kubeconfig's token or certificate"
FORBIDDEN_HINT = (
    "your Kubernetes user lacks this permission (`kubectl auth can-i --list` shows what it may do); "
    "ask the cluster's admin, or apply kod's RBAC (kustomizations/)"
)
UNREACHABLE_HINT = "is the cluster up and its address right? (`python -m localenv status` for the local one)"


class Expired(errors.KodError):
    """410 Gone: the resourceVersion a watch (or a list) asked for is too old; list again."""

    status = 410
    code = "Expired"


def is_retried(status: int) -> bool:
    """True for the answers worth sending the same request again: 429 and 5xx (but 501)."""
    return status == 429 or (status >= 500 and status != 501)


def status_message(body: bytes, status: int) -> str:
    """The message of a Kubernetes `Status` body; the body's text when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("reason") or "")
    else:
        message = body.decode("utf-8", "replace").strip()[:300]
    return message or f"HTTP {status}"


def status_error(status: int, body: bytes, what: str) -> errors.KodError:
    """The vocabulary's exception for an error answer (`status`, its body) to `what` was asked
    ("GET /api/v1/nodes/x"); see the table above."""
    text = f"{what}: {status_message(body, status)}"
    if status == 410:
        return Expired(text)
    if status == 401:
        return errors.Unauthorized(text, hint=UNAUTHORIZED_HINT)
    if status == 403:
        return errors.Forbidden(text, hint=FORBIDDEN_HINT)
    if status in (400, 422):
        return errors.InvalidInput(text)
    if status == 429 or status >= 500:
        return errors.Unavailable(text)
    return errors.from_status(status, text)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (Kubernetes sends whole seconds), capped at
    `MAX_RETRY_AFTER`; None when absent or not a number."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None
