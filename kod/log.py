"""Structured logging for every component.

`configure()` is called once, in a program's `main`. Code gets a logger with `get_logger()` and
binds pod context (`pod_namespace`, `pod_name`, `pod_uid`, `session`) with `bind_pod()`; the
request id travels in a context variable, so every line logged while serving a request carries it,
and `kod.http` forwards it to the next hop.
"""

from __future__ import annotations

import logging
import sys
import uuid
from contextvars import ContextVar
from typing import Any

import structlog

request_id_var: ContextVar[str | None] = ContextVar("kod_request_id", default=None)

#: Keys whose values are never logged, whatever a caller binds.
_SECRET_KEYS = frozenset({"token", "password", "authorization", "secret", "private_key", "vnc_password"})


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    rid = request_id_var.get()
    if rid and "request_id" not in event:
        event["request_id"] = rid
    return event


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def configure(*, level: str = "info", json: bool | None = None, component: str | None = None) -> None:
    """Set up structlog and the standard logging bridge. `json=None` picks JSON when stderr is
    not a terminal (services under a supervisor) and readable lines otherwise."""
    if json is None:
        json = not sys.stderr.isatty()
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        structlog.processors.format_exc_info,
    ]
    if json:
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    if component:
        structlog.contextvars.bind_contextvars(component=component)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A bound structlog logger; `name` is logged as `log`."""
    if name:
        initial.setdefault("log", name)
    return structlog.get_logger(**initial)


def pod_context(namespace: str, name: str, uid: str | None = None, **extra: Any) -> dict[str, Any]:
    """The standard pod keys, for `logger.bind(**pod_context(...))`."""
    ctx: dict[str, Any] = {"pod_namespace": namespace, "pod_name": name}
    if uid:
        ctx["pod_uid"] = uid
    ctx.update(extra)
    return ctx
