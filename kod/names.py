"""Kubernetes names, and the rule that names a desktop's virtual node: one home for both.

The checks are Kubernetes' own (apimachinery's validation): a DNS-1123 label (namespaces,
container and volume names, at most 63 characters), a DNS-1123 subdomain (pod, claim and node
names, at most 253), and a label value (at most 63, may be empty).
"""

from __future__ import annotations

import re
import socket

#: One DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: Dot-separated labels.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
#: A pod's uid as the API server makes them (a UUID), or anything of letters, digits and '-'.
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")

LABEL_MAX = 63
SUBDOMAIN_MAX = 253


def is_dns_label(value: str) -> bool:
    """A DNS-1123 label: namespaces, container, port and volume names."""
    return len(value) <= LABEL_MAX and _LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    """A DNS-1123 subdomain: pod, node, Secret, ConfigMap and claim names."""
    return len(value) <= SUBDOMAIN_MAX and _SUBDOMAIN.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    """A label value; the empty string is one."""
    return value == "" or (len(value) <= LABEL_MAX and _LABEL_VALUE.fullmatch(value) is not None)


def is_uid(value: str) -> bool:
    """A pod uid (we accept what the API server makes and what tests make up: letters, digits, '-')."""
    return _UID.fullmatch(value) is not None


def dns_label_problem(value: str) -> str | None:
    """None for a valid DNS-1123 label, else what is wrong (for error messages)."""
    if is_dns_label(value):
        return None
    return f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', at most {LABEL_MAX} characters)"


def dns_subdomain_problem(value: str) -> str | None:
    """None for a valid DNS-1123 subdomain, else what is wrong."""
    if is_dns_subdomain(value):
        return None
    return (f"{value!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', "
            f"at most {SUBDOMAIN_MAX} characters)")


def virtual_node_name(hostname: str | None = None) -> str:
    """`desktop-<hostname>`: the default name of a desktop's virtual node, lower-cased and reduced
    to a valid DNS-1123 subdomain. vk_bridge registers it, localenv's desktop stack configures it,
    cloudify looks for it: all three call this."""
    host = (hostname or socket.gethostname()).lower()
    host = re.sub(r"[^a-z0-9.-]+", "-", host).strip("-.") or "localhost"
    # Dots may not touch a dash or another dot in a subdomain.
    host = re.sub(r"[-.]*\.[-.]*", ".", host)
    return f"desktop-{host}"[:SUBDOMAIN_MAX].rstrip("-.")


#: Prefix of a user's own namespace (`kod-<user>`): where cloudify's sessions live and what the
#: user's virtual node admits by default.
USER_NAMESPACE_PREFIX = "kod-"


def user_namespace(user: str) -> str:
    """`kod-<user>`: the namespace of a user's sessions, and the namespace a user's virtual node
    runs pods of by default. `user` is made a DNS-1123 label (lower-cased; anything but letters,
    digits and '-' becomes '-'; cut to 63 characters). cloudify, vk_bridge and localenv call this,
    so that the three agree. Raises ValueError when nothing of `user` is left."""
    body = re.sub(r"[^a-z0-9-]+", "-", user.lower()).strip("-")
    if not body:
        raise ValueError(f"cannot make a namespace name of the user name {user!r}")
    return f"{USER_NAMESPACE_PREFIX}{body}"[:LABEL_MAX].rstrip("-")
