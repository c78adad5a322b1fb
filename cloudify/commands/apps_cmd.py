"""`cloudify apps`: the apps cloudify can run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kod import apps

from cloudify.commands import _table
from cloudify.context import Context


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(name, aliases=aliases, parents=parents, help="list the apps cloudify can run",
                       description="List the apps cloudify can run, with their images and what -v keeps.")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    p.set_defaults(handler=handle)


def rows(ctx: Context) -> list[dict[str, Any]]:
    return [
        {
            "name": app.name,
            "description": app.description,
            "image": ctx.settings.image(app.image),
            "persists": [f"~/{p}" for p in app.persist_paths],
            "needs": sorted(app.extended_resources),
        }
        for app in apps.APPS.values()
    ]


def table(data: list[dict[str, Any]], width: int | None = None) -> str:
    """The apps as a table `width` columns wide (default: the terminal's); the paths -v keeps and
    the description wrap onto more lines rather than run into each other."""
    lines = [
        [row["name"], row["image"], " ".join(row["persists"]),
         row["description"] + (f" (needs {', '.join(row['needs'])})" if row["needs"] else "")]
        for row in data
    ]
    return _table.render(["APP", "IMAGE", "KEPT WITH -v", "DESCRIPTION"], lines, width=width,
                         wrap={"KEPT WITH -v", "DESCRIPTION"})


def handle(args: argparse.Namespace, ctx: Context) -> int:
    data = rows(ctx)
    if args.json:
        print(json.dumps(data, indent=2), file=ctx.out)
        return 0
    print(table(data), file=ctx.out)
    return 0
