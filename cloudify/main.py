"""`cloudify`: run desktop apps in Kubernetes pods and use them on this desktop.

    cloudify firefox                     # Firefox in the cluster, on your screen, with sound
    cloudify -q 7 -t 30 libreoffice      # better picture, 30 s start-up timeout (always encrypted)
    cloudify -v firefox                  # keep settings and bookmarks across sessions
    cloudify -r docker blender           # the viewer in local Docker instead of a pod
    cloudify -p novnc firefox            # in your browser (implies -r native)
    cloudify apps | sessions | stop ID | gc | uninstall

`main` reads the environment and the settings once, then hands over to one module per command
(`cloudify.commands.*`), each of which validates its input and calls the library.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from kod import __version__, console, errors
from kod.log import configure

from cloudify import settings as s
from cloudify.commands import apps_cmd, gc_cmd, run_cmd, sessions_cmd, stop_cmd, uninstall_cmd
from cloudify.context import Context

COMMANDS = {
    "run": run_cmd,
    "apps": apps_cmd,
    "sessions": sessions_cmd,
    "stop": stop_cmd,
    "gc": gc_cmd,
    "uninstall": uninstall_cmd,
}
ALIASES = {"ps": "sessions", "list": "sessions", "ls": "sessions"}
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

EPILOG = """\
commands:
  run        run an app (the default: `cloudify firefox` is `cloudify run firefox`)
  apps       list the apps cloudify can run
  sessions   list your running sessions (--json for scripts); aliases: ps, list
  stop       stop a session (or --all)
  gc         remove what killed or crashed sessions left behind
  uninstall  remove your sessions and, after you confirm, your persistent volumes

examples:
  cloudify firefox
  cloudify -q 7 -t 10 firefox
  cloudify -q 7 -t 10 -r docker firefox
  cloudify -v libreoffice
  cloudify -p novnc firefox
  cloudify sessions --json
  cloudify stop k3x9a0b2

who you are: cloudify uses your own credentials ($KUBECONFIG, ~/.kube/config, then the
kubeconfig the local cluster made for you, ~/.local/share/kod/cluster/users/<user>.kubeconfig;
never its admin's), and your sessions live in your own namespace, kod-<user> (--namespace).

settings: defaults come from {config} (TOML; keys as the long options,
e.g. `quality = 7`), then KOD_CLOUDIFY_* environment variables (KOD_CLOUDIFY_QUALITY=7), then
the command line. `cloudify COMMAND --help` describes each command.
"""


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster and settings")
    g.add_argument("--config", metavar="FILE", type=Path, help=f"settings file (default {s.settings_path()})")
    g.add_argument("--kubeconfig", metavar="FILE", help="your kubeconfig (default $KUBECONFIG, ~/.kube/config, then the "
                   "one the local cluster made for you, ~/.local/share/kod/cluster/users/<user>.kubeconfig; never its admin's)")
    g.add_argument("--context", metavar="NAME", help="kubeconfig context (default the current one)")
    g.add_argument("--namespace", "-n", metavar="NS", help="namespace of the sessions (default your own, kod-<user>)")
    g.add_argument("--user", metavar="NAME", help="your user name in the cluster (default your login name)")
    g.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="log detail on stderr (default warning)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudify",
        description="Run desktop applications in Kubernetes pods and use them on this desktop as if they "
        "were local: picture, sound, keyboard, mouse, and settings that persist.",
        epilog=EPILOG.format(config=s.settings_path()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="cloudify [options] APP\n       cloudify {run,apps,sessions,stop,gc,uninstall} ...",
    )
    parser.add_argument("--version", action="version", version=f"cloudify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="cloudify")
    parents = [common_options()]
    for name, module in COMMANDS.items():
        aliases = [a for a, target in ALIASES.items() if target == name]
        module.add_parser(sub, name, parents=parents, aliases=aliases)
    return parser


def with_default_command(argv: Sequence[str]) -> list[str]:
    """`cloudify firefox`, `cloudify -s firefox`: no command given means `run`."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help", "--version"):
        return args
    if args[0] in COMMANDS or args[0] in ALIASES:
        return args
    return ["run", *args]


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """The settings the command line sets (None: not given, keep the file/env value)."""
    keys = ("kubeconfig", "context", "namespace", "user")
    out: dict[str, object] = {k: getattr(args, k, None) for k in keys}
    extra = getattr(args, "settings_overrides", None)
    if extra:
        out.update(extra(args))
    return out


def report(exc: errors.KodError, err: TextIO | None = None) -> int:
    """Print an error for a person: what is wrong, then what to do; the exit code."""
    err = err or sys.stderr
    print(f"cloudify: {exc.message}", file=err)
    if exc.hint:
        print(f"  what to do: {exc.hint}", file=err)
    return EXIT_USAGE if isinstance(exc, errors.InvalidInput) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    # Output may go to a pipe whose reader dies (`| tee log` and Ctrl-C): losing messages must
    # never stop a cleanup or change the exit code.
    console.install()
    parser = build_parser()
    args = parser.parse_args(with_default_command(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    configure(level=args.log_level, json=False, component="cloudify")
    host = s.HostEnv.from_environ(os.environ)
    try:
        settings = s.load(path=args.config, environ=os.environ, overrides=overrides_from(args))
        ctx = Context(settings=settings, host=host, out=sys.stdout, err=sys.stderr)
        return int(args.handler(args, ctx))
    except errors.KodError as exc:
        return report(exc)
    except KeyboardInterrupt:
        print("cloudify: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: say so plainly (the session cleaned up in its finally)
        if args.log_level == "debug":
            raise
        return report(errors.Internal(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug; run again with --log-level debug for the details, and `cloudify gc` if anything was left",
        ))


if __name__ == "__main__":
    sys.exit(main())
