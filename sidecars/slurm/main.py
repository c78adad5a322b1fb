"""`kod-slurm-sidecar`: the InterLink plugin that runs pods as Slurm batch jobs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kod import __version__
from kod.log import get_logger
from kod.service import run_service, serve_app
from kod.settings import load_settings
from sidecars.slurm.app import create_app
from sidecars.slurm.settings import ENV_PREFIX, SlurmSidecarSettings, default_config_file

log = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kod-slurm-sidecar",
        description="Run the pods of a virtual HPC node as Slurm batch jobs, and serve the InterLink API "
        "(ping, create, list, get, delete, logs, watch) for interlink. See docs/slurm.md.",
        epilog=f"configuration: defaults < TOML (--config, default {default_config_file()}) < {ENV_PREFIX}* < flags. "
        "SIGTERM stops the service; jobs keep running and the next start adopts them.",
    )
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None, help="listen port (default 4001; 0 picks a free one)")
    parser.add_argument("--socket", default=None, help="listen on this unix socket (mode 0600) instead of TCP")
    parser.add_argument("--name", default=None, help="sidecar name: part of every job's comment (default slurm)")
    parser.add_argument("--work-dir", type=Path, default=None, help="job directories, image trees, pod records")
    parser.add_argument("--token-file", type=Path, default=None)
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    parser.add_argument("--print-settings", action="store_true")
    parser.add_argument("--version", action="version", version=f"kod-slurm-sidecar {__version__}")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> SlurmSidecarSettings:
    listen = {k: v for k, v in {"host": args.host, "port": args.port, "socket": args.socket}.items() if v is not None}
    overrides = {"listen": listen or None, "token_file": str(args.token_file) if args.token_file else None,
                 "log_level": args.log_level, "name": args.name,
                 "work_dir": str(args.work_dir) if args.work_dir else None}
    return load_settings(SlurmSidecarSettings, args.config or default_config_file(), env_prefix=ENV_PREFIX,
                         overrides=overrides)


async def serve(settings: SlurmSidecarSettings, *, ready: asyncio.Event | None = None) -> None:
    await serve_app(create_app(settings), settings.listen, shutdown_timeout=settings.shutdown_timeout_seconds,
                    env_prefix=ENV_PREFIX, ready=ready, listening="kod-slurm-sidecar listening",
                    stopping="stopping (jobs keep running in Slurm)",
                    log_fields={"partition": settings.partition, "name": settings.name})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_service("kod-slurm-sidecar", lambda: load(args), serve, component="slurm-sidecar",
                       print_settings=args.print_settings)


if __name__ == "__main__":
    sys.exit(main())
