"""The interlink application: `create_app(settings)` builds it, `main` serves it.

    settings = load_settings(InterlinkSettings, path, env_prefix=ENV_PREFIX)
    app = create_app(settings)          # reads (or creates) the token file
    web.run_app(app, ...)               # or an AppRunner, as interlink.main does

On startup the cleanup context opens one client and one watch stream per sidecar; on shutdown
the watch clients are released first, then the streams are cancelled and the clients closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from kod.http import bearer_auth_middleware, error_middleware, request_id_middleware
from kod.tokens import server_token
from interlink.hub import Hub
from interlink.routes import OPEN_PATHS, add_routes
from interlink.settings import InterlinkSettings
from interlink.sidecar import SidecarClient
from interlink.state import HUB, SETTINGS, SIDECARS, STORE, Sidecars
from interlink.store import PodStore
from interlink.upstream import LinkHealth, follow_sidecar

def create_app(settings: InterlinkSettings) -> web.Application:
    """The interlink app. Raises InvalidInput when the token cannot be read or created."""
    token = server_token(settings.token, settings.token_file, create=settings.create_token)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            error_middleware,
            bearer_auth_middleware(token, open_paths=OPEN_PATHS),
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
            client = SidecarClient(conf)
            sidecars.clients[conf.name] = client
            sidecars.health[conf.name] = health = LinkHealth()
            follow = follow_sidecar(client, app[STORE], settings.watch, health)
            tasks.append(asyncio.create_task(follow, name=f"interlink-watch-{conf.name}"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in sidecars.clients.values():
                await client.close()

    async def end_streams(app: web.Application) -> None:
        # Watch clients get a clean end (they reconnect to whoever serves next); log streams are
        # cut at once rather than after the shutdown timeout (their clients see the cut).
        app[HUB].close_all()
        sidecars = app[SIDECARS]
        sidecars.stopping = True
        for upstream in list(sidecars.streams):
            upstream.close()

    app.cleanup_ctx.append(sidecar_links)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    return app
