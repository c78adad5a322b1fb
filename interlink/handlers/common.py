"""Helpers shared by the handlers: path parameters checked as Kubernetes names."""

from __future__ import annotations

from aiohttp import web

from kod import errors, names

def path_name(request: web.Request, key: str, *, label: bool = False) -> str:
    """A path parameter that must be a Kubernetes name; anything else is InvalidInput (400)."""
    value = request.match_info[key]
    limit = 63 if label else 253
    if not (names.is_dns_label(value) if label else names.is_dns_subdomain(value)):
        kind = "DNS label" if label else "DNS subdomain"
        raise errors.InvalidInput(f"{key} {value!r} is not a valid Kubernetes name (a {kind} of at most {limit} characters)")
    return value


def pod_ref(request: web.Request) -> tuple[str, str]:
    """(namespace, name) from the path."""
    return path_name(request, "namespace", label=True), path_name(request, "name")
