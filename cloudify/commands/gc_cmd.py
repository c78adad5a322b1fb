"""`cloudify gc`: remove what killed or crashed sessions left behind."""

from __future__ import annotations

import argparse
from typing import Any

from kod import errors

from cloudify import sessions
from cloudify.commands import _async
from cloudify.context import Context

DESCRIPTION = """\
Remove the leftovers of sessions whose cloudify is gone (killed, crashed, machine rebooted): their
pods, Services, Secrets and Jobs in the cluster, their viewer containers in local Docker and their
private files. Also removes your sessions that passed their expiry time, wherever they were
started. Running sessions (here or on your other desktops) and persistent volumes are kept.
cloudify also does this by itself for its own desktop's records at the start of each session."""


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(name, aliases=aliases, parents=parents, help="remove leftovers of dead sessions",
                       description=DESCRIPTION)
    p.set_defaults(handler=handle)


async def _gc(ctx: Context) -> int:
    settings = ctx.settings
    kube = None
    try:
        try:
            kube = ctx.connect(timeout=15)
            await kube.get("/version")
        except errors.Unavailable as exc:
            print(f"cloudify: the cluster is not reachable ({exc.message}); cleaning this desktop only", file=ctx.err)
            if kube is not None:
                await kube.close()
            kube = None
        report = await sessions.gc(kube, settings.namespace, ctx.user, ctx.registry, hostname=ctx.hostname,
                                   docker_url=settings.docker_url or ctx.host.docker_host)
    finally:
        if kube is not None:
            await kube.close()
    for item in report.collected:
        print(f"removed session {item}", file=ctx.out)
    for name in report.containers:
        print(f"removed container {name}", file=ctx.out)
    if not report.collected and not report.containers:
        print("nothing to remove", file=ctx.out)
    if report.kept_running:
        print(f"kept running: {', '.join(report.kept_running)}", file=ctx.out)
    return 0


def handle(args: argparse.Namespace, ctx: Context) -> int:
    return _async.run(lambda: _gc(ctx), interrupted=_async.EXIT_INTERRUPTED)
