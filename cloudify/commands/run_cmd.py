"""`cloudify [run] [options] APP`: run an app in the cluster and show it here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kod import apps

from cloudify.commands import _async
from cloudify.context import Context
from cloudify.options import find_app, session_options
from cloudify.progress import Timeline

DESCRIPTION = """\
Run APP in a pod of the cluster and show it on this desktop, with its sound. The session ends
when you close the app's window (or the app ends, or on Ctrl-C); then everything it created is
removed. Without a reachable cluster, an app installed on this desktop runs here instead."""

EXAMPLES = """\
examples:
  cloudify firefox                         Firefox in the cluster, the viewer as a pod on your virtual node
  cloudify -q 7 -t 10 firefox              better picture, 10 s timeout (encrypted, as always)
  cloudify -q 7 -t 10 -r docker firefox    the same with the viewer in local Docker
  cloudify -v libreoffice                  settings and documents kept in your volume for LibreOffice
  cloudify -p novnc firefox                in your browser (implies -r native)
  cloudify --timings firefox               how long each start-up phase took

run modes (-r):
  pod     the viewer runs as a pod on your desktop's virtual node (the desktop stack must run)
  docker  cloudify runs the viewer in the local Docker engine
  native  your own vncviewer and ssh (or browser, with -p novnc)

security: encrypted by default. VNC (or noVNC) and the sound go through SSH with keys made for
the session, and the viewer pins the app's host key; VNC and noVNC listen on the app pod's
localhost only, never on a node's address. -s (the original's flag) is accepted and changes
nothing. --insecure turns the SSH tunnel off for VNC/noVNC, with a warning: the viewer then
reaches VNC through the API server's port-forward (never a NodePort), cannot check that it talks
to the session's app, and only the one-time password (8 characters count) guards it."""


def _int_range(lo: int, hi: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number from {lo} to {hi}, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be from {lo} to {hi}, not {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the timeout must be a positive number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the timeout must be a positive number of seconds, not {text}")
    return value


def add_parser(sub: Any, name: str, *, parents: list[argparse.ArgumentParser], aliases: list[str]) -> None:
    p = sub.add_parser(
        name, aliases=aliases, parents=parents, help="run an app (the default command)",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("app", metavar="APP", help=f"the app: {', '.join(apps.APPS)}")
    g = p.add_argument_group("session options (defaults from the config file)")
    g.add_argument("-s", "--secure", action="store_const", const=True, default=None,
                   help="encrypt (the default, kept from the original: changes nothing)")
    g.add_argument("--insecure", dest="secure", action="store_const", const=False,
                   help="VNC/noVNC without SSH, through the API server's port-forward; guarded only by the "
                   "one-time VNC password (warned about)")
    g.add_argument("--no-secure", dest="secure", action="store_const", const=False, help=argparse.SUPPRESS)
    g.add_argument("-t", "--timeout", type=_positive_seconds, metavar="SECONDS",
                   help="seconds to wait for each start-up phase (default 60)")
    g.add_argument("-p", "--protocol", choices=("vnc", "novnc"), help="vnc (a VNC viewer, default) or novnc (your browser)")
    g.add_argument("-q", "--quality", type=_int_range(0, 9, "the quality"), metavar="0-9",
                   help="JPEG quality of the picture, 0 (low) to 9 (high); default 5")
    g.add_argument("-c", "--compression", type=_int_range(0, 9, "the compression"), metavar="0-9",
                   help="compression level, 0 (none) to 9 (most; the original allowed 0-6); default 2")
    g.add_argument("--frame-rate", type=_int_range(1, 60, "the frame rate"), metavar="1-60",
                   help="the most screen updates per second (a ceiling: a still picture sends none); "
                   "default 60 on a LAN, else fitted to the measured link like -q and -c")
    g.add_argument("-v", "--persist", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the app's settings and documents in your persistent volume for this app")
    g.add_argument("-r", "--run-mode", choices=("pod", "docker", "native"),
                   help="where the viewer runs: pod (default), docker, native")
    o = p.add_argument_group("output")
    o.add_argument("--timings", action="store_true", help="print when each start-up phase was reached")
    o.add_argument("--timings-file", type=Path, metavar="FILE", help="write the phase times as JSON to FILE")
    o.add_argument("--quiet", action="store_true", help="no progress lines (errors are still printed)")
    a = p.add_argument_group("advanced (also settings)")
    a.add_argument("--reach", choices=("auto", "nodeport", "port-forward"),
                   help="how the viewer reaches the app (default auto: NodePort when a node address answers)")
    a.add_argument("--no-fallback", dest="fallback", action="store_false", default=None,
                   help="never run the app locally, even when the cluster is away")
    a.add_argument("--user-node", metavar="NODE", help="the cluster node that is this desktop: apps never run there")
    p.set_defaults(handler=handle, settings_overrides=settings_overrides)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "secure": args.secure, "timeout": args.timeout, "protocol": args.protocol, "quality": args.quality,
        "compression": args.compression, "frame_rate": args.frame_rate, "persist": args.persist, "run_mode": args.run_mode,
        "reach": args.reach, "fallback": args.fallback, "user_node": args.user_node,
    }


def handle(args: argparse.Namespace, ctx: Context) -> int:
    from cloudify.session import SessionRunner  # the heavy part: only for this command

    find_app(args.app)  # an unknown app fails here, before anything else
    options = session_options(args.app, ctx.settings, run_mode_given=args.run_mode is not None)
    timeline = Timeline.from_process_start(out=ctx.err, timings=args.timings, quiet=args.quiet)
    runner = SessionRunner(ctx, options, timeline)
    timeline.say(f"cloudify: {options.app.name} (session {runner.names.session}, viewer: {options.run_mode})")
    code = _async.run(runner.run, interrupted=_async.EXIT_INTERRUPTED, notice="stopping the session…")
    if args.timings:
        print(timeline.table(), file=ctx.err)
    if args.timings_file:
        args.timings_file.write_text(json.dumps({"session": runner.names.session, "phases": timeline.as_dict()}))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `cloudify`")
