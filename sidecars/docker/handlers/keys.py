"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from kod.hub import Hub
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings

SETTINGS = web.AppKey("settings", DockerSidecarSettings)
RUNTIME = web.AppKey("runtime", Runtime)
HUB = web.AppKey("hub", Hub)
#: The exec, attach and port-forward WebSockets open now, closed at shutdown.
SOCKETS = web.AppKey("sockets", set)
