"""`cloudify stop SESSION...`: end sessions (one run here ends as after Ctrl-C)."""

from __future__ import annotations

import argparse
from typing import Any

from kod import errors

from cloudify import sessions
from cloudify.commands import _async
from cloudify.context import Context


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(
        name, aliases=aliases, parents=parents, help="stop sessions",
        description="Stop sessions. A session run by a cloudify on this desktop is asked to end (it "
        "cleans up as after Ctrl-C); any other is removed directly. Persistent volumes stay.",
        epilog="examples:\n  cloudify stop k3x9a0b2\n  cloudify stop --all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sessions", nargs="*", metavar="SESSION", help="session ids (see `cloudify sessions`)")
    p.add_argument("--all", action="store_true", help="stop all your sessions")
    p.set_defaults(handler=handle)


async def _stop(ctx: Context, ids: list[str], all_: bool) -> int:
    settings = ctx.settings
    async with ctx.connect(timeout=15) as kube:
        if all_:
            ids = [s.session for s in await sessions.list_sessions(kube, settings.namespace, ctx.user, ctx.registry)]
            if not ids:
                print("no sessions to stop", file=ctx.out)
        failed = 0
        for sid in ids:
            try:
                print(await sessions.stop(kube, settings.namespace, ctx.user, ctx.registry, sid,
                                          docker_url=settings.docker_url or ctx.host.docker_host), file=ctx.out)
            except errors.KodError as exc:
                failed += 1
                print(f"cloudify: {exc}", file=ctx.err)
        return 1 if failed else 0


def handle(args: argparse.Namespace, ctx: Context) -> int:
    if not args.sessions and not args.all:
        raise errors.InvalidInput("name the sessions to stop, or give --all", hint="`cloudify sessions` lists them")
    if args.sessions and args.all:
        raise errors.InvalidInput("give session ids or --all, not both")
    return _async.run(lambda: _stop(ctx, list(args.sessions), args.all), interrupted=_async.EXIT_INTERRUPTED)
