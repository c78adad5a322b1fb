"""`cloudify sessions`: your running sessions, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from kod import errors

from cloudify import sessions
from cloudify.commands import _async, _table
from cloudify.context import Context


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(
        name, aliases=aliases, parents=parents, help="list your sessions",
        description="List your sessions: those in the cluster and those this desktop is running. "
        "STATE 'orphaned' means the cloudify that ran it is gone: `cloudify gc` removes it.",
    )
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    p.set_defaults(handler=handle)


def _age(started: str | None, now: datetime) -> str:
    if not started:
        return "-"
    try:
        secs = int((now - datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)).total_seconds())
    except ValueError:
        return "-"
    return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"


async def _list(ctx: Context) -> tuple[list[sessions.SessionInfo], str | None]:
    warning = None
    kube = None
    try:
        kube = ctx.connect(timeout=10)
        found = await sessions.list_sessions(kube, ctx.settings.namespace, ctx.user, ctx.registry)
    except errors.Unavailable as exc:
        warning = f"the cluster is not reachable ({exc.message}): showing this desktop's records only"
        found = await sessions.list_sessions(None, ctx.settings.namespace, ctx.user, ctx.registry)
    finally:
        if kube is not None:
            await kube.close()
    return found, warning


def handle(args: argparse.Namespace, ctx: Context) -> int:
    nothing: tuple[list[sessions.SessionInfo], str | None] = ([], None)
    found, warning = _async.run(lambda: _list(ctx), interrupted=nothing)
    if warning:
        print(f"cloudify: {warning}", file=ctx.err)
    if args.json:
        print(json.dumps([s.to_dict() for s in found], indent=2), file=ctx.out)
        return 0
    if not found:
        print(f"no sessions of {ctx.user} in namespace {ctx.settings.namespace}", file=ctx.out)
        return 0
    now = datetime.now(UTC)
    print(table(found, now), file=ctx.out)
    return 0


def table(found: list[sessions.SessionInfo], now: datetime, width: int | None = None) -> str:
    """The sessions as a table, each column as wide as its content (a long node name never runs
    into the next column)."""
    lines = []
    for s in found:
        opts = ",".join(o for o, on in (("secure", s.secure), ("persist", bool(s.persist)), ("novnc", s.protocol == "novnc")) if on) or "-"
        here = "this one" + (f" (pid {s.pid})" if s.cli_alive else "") if s.recorded_here else (s.desktop_host or "-")
        lines.append([s.session, s.app, s.state(), s.run_mode, opts, _age(s.started, now), s.app_node or "-", here])
    return _table.render(["SESSION", "APP", "STATE", "MODE", "OPTIONS", "AGE", "NODE", "DESKTOP"], lines,
                         width=width, wrap={"DESKTOP"})
