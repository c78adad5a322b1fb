"""The interlink application: `create_app(settings)` builds it, `main` serves it.

    settings = load_settings(InterlinkSettings, path, env_prefix=ENV_PREFIX)
    app = create_app(settings)          # reads (or creates) the token file
    await kod.service.serve_app(app, settings.listen, ...)    # as interlink.main does

On startup the cleanup context opens one client (`kod.http.ApiClient`) and one status stream
(`kod.watch_follow`) per sidecar; on shutdown the watch clients are released first, then the
streams are cancelled and the clients closed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from aiohttp import web

from kod.http import bearer_auth_middleware, error_middleware, request_id_middleware
from kod.hub import Hub
from kod.log import get_logger
from kod.routes import INTERLINK, open_paths
from kod.tokens import server_token
from kod.watch_follow import follow_watch

from interlink.routes import add_routes
from interlink.settings import InterlinkSettings
from interlink.sidecar import open_sidecar
from interlink.state import HUB, SETTINGS, SIDECARS, STORE, Sidecars
from interlink.store import PodStore

log = get_logger(__name__)


def create_app(settings: InterlinkSettings) -> web.Application:
    """The interlink app. Raises InvalidInput when the token cannot be read or created."""
    token = server_token(settings.token, settings.token_file, create=settings.create_token)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            error_middleware,
            bearer_auth_middleware(token, open_paths=open_paths(INTERLINK)),
        ]
    )
    hub = Hub(settings.watch.client_queue)
    app[SETTINGS] = settings
    app[HUB] = hub
    app[STORE] = PodStore([s.name for s in settings.sidecars], hub)
    app[SIDECARS] = Sidecars(settings)

    async def sidecar_links(app: web.Application) -> AsyncIterator[None]:
        sidecars = app[SIDECARS]
        sidecars.started = asyncio.get_running_loop().time()
        tasks = []
        for conf in settings.sidecars:
            sidecar = sidecars.by_name[conf.name] = open_sidecar(conf)
            follow = follow_watch(
                sidecar.api,
                functools.partial(app[STORE].apply, conf.name),
                idle_seconds=settings.watch.sidecar_idle_seconds,
                backoff=settings.watch.backoff_seconds,
                health=sidecar.health,
                logger=log.bind(sidecar=conf.name),
            )
            tasks.append(asyncio.create_task(follow, name=f"interlink-watch-{conf.name}"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sidecar in sidecars.by_name.values():
                await sidecar.api.close()

    async def end_streams(app: web.Application) -> None:
        # Watch clients get a clean end (they reconnect to whoever serves next); log streams are
        # cut at once rather than after the shutdown timeout (their clients see the cut).
        app[HUB].close()
        sidecars = app[SIDECARS]
        sidecars.stopping = True
        for upstream in list(sidecars.streams):
            upstream.close()
        for socket in list(sidecars.sockets):
            await socket.close()

    app.cleanup_ctx.append(sidecar_links)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    return app
