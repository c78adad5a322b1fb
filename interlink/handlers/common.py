"""Helpers shared by the handlers: path parameters checked as Kubernetes names."""

from __future__ import annotations

import re

from aiohttp import web

from kod import errors

# A DNS-1123 subdomain (pod names) and label (namespaces, containers), as Kubernetes checks them.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def path_name(request: web.Request, key: str, *, label: bool = False) -> str:
    """A path parameter that must be a Kubernetes name; anything else is InvalidInput (400)."""
    value = request.match_info[key]
    limit = 63 if label else 253
    if len(value) > limit or not (_LABEL if label else _SUBDOMAIN).match(value):
        kind = "DNS label" if label else "DNS subdomain"
        raise errors.InvalidInput(f"{key} {value!r} is not a valid Kubernetes name (a {kind} of at most {limit} characters)")
    return value


def pod_ref(request: web.Request) -> tuple[str, str]:
    """(namespace, name) from the path."""
    return path_name(request, "namespace", label=True), path_name(request, "name")
