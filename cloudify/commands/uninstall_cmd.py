"""`cloudify uninstall`: remove your sessions, leftovers and (confirmed) persistent volumes."""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any, TextIO

from kod import errors

from cloudify import sessions
from cloudify import settings as s
from cloudify.commands import _async
from cloudify.context import Context

DESCRIPTION = """\
Stop all your sessions, remove their leftovers, this desktop's session records and, only after
you confirm, your persistent volumes. WARNING: the volumes hold your apps' settings and documents
(bookmarks, profiles, files saved with -v); deleting them cannot be undone."""


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(name, aliases=aliases, parents=parents, help="remove your sessions and (confirmed) volumes",
                       description=DESCRIPTION,
                       epilog="examples:\n  cloudify uninstall\n  cloudify uninstall --keep-data\n  cloudify uninstall --yes",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--yes", action="store_true", help="delete the persistent volumes without asking (for scripts)")
    g.add_argument("--keep-data", action="store_true", help="keep the persistent volumes")
    p.set_defaults(handler=handle)


def confirm(question: str, *, stdin: TextIO, out: TextIO) -> bool:
    """True only when the user types 'yes'. Without a terminal to ask, False."""
    if not stdin.isatty():
        return False
    print(f"{question} Type 'yes' to delete them: ", end="", file=out, flush=True)
    return stdin.readline().strip().lower() == "yes"


async def _uninstall(ctx: Context, args: argparse.Namespace, stdin: TextIO) -> int:
    settings = ctx.settings
    docker_url = settings.docker_url or ctx.host.docker_host
    async with ctx.connect(timeout=15) as kube:
        for info in await sessions.list_sessions(kube, settings.namespace, ctx.user, ctx.registry):
            try:
                print(await sessions.stop(kube, settings.namespace, ctx.user, ctx.registry, info.session,
                                          docker_url=docker_url), file=ctx.out)
            except errors.KodError as exc:
                print(f"cloudify: {exc}", file=ctx.err)
        await sessions.gc(kube, settings.namespace, ctx.user, ctx.registry, hostname=ctx.hostname, docker_url=docker_url)
        removed = sessions.remove_local_containers(docker_url, None, user=ctx.user)
        for name in removed:
            print(f"removed container {name}", file=ctx.out)
        claims = await sessions.user_volumes(kube, settings.namespace, ctx.user)
        if claims and not args.keep_data:
            listing = ", ".join(c["metadata"]["name"] for c in claims)
            question = (f"{len(claims)} persistent volume(s) hold your apps' settings and documents: {listing}. "
                        "Deleting them cannot be undone.")
            if args.yes or confirm(question, stdin=stdin, out=ctx.out):
                await sessions.delete_volumes(kube, settings.namespace, claims)
                print(f"deleted {listing}", file=ctx.out)
            else:
                print(f"kept your volumes ({listing}); `cloudify uninstall --yes` deletes them", file=ctx.out)
        elif claims:
            print(f"kept your volumes: {', '.join(c['metadata']['name'] for c in claims)}", file=ctx.out)
    shutil.rmtree(s.state_dir(settings, ctx.host), ignore_errors=True)
    print(f"done. Your settings file, if any, stays: {s.settings_path()}", file=ctx.out)
    return 0


def handle(args: argparse.Namespace, ctx: Context) -> int:
    return _async.run(lambda: _uninstall(ctx, args, sys.stdin), interrupted=_async.EXIT_INTERRUPTED)
