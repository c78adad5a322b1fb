"""`kod-docker-sidecar`: the InterLink plugin that runs pods in the local Docker engine."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kod import __version__
from kod.log import get_logger
from kod.service import run_service, serve_app
from kod.settings import load_settings
from sidecars.docker.app import create_app
from sidecars.docker.settings import ENV_PREFIX, DockerSidecarSettings, default_config_file

log = get_logger(__name__)

EPILOG = f"""\
configuration (lowest to highest precedence):
  defaults < the TOML file (--config, default {default_config_file()})
  < {ENV_PREFIX}* environment variables < these flags.
  Environment names are the prefix plus the field in upper case, '__' between nested
  levels, lists as JSON, for example:
    {ENV_PREFIX}LISTEN__PORT=4001
    {ENV_PREFIX}DOCKER_URL=unix:///var/run/docker.sock
    {ENV_PREFIX}INFRA_IMAGE=kod/pause:3.10
    {ENV_PREFIX}POLICY__ALLOWED_HOST_PATHS='["/tmp/.X11-unix", "/run/kod/pulse"]'
  Every setting is listed in docs/docker-sidecar.md; --print-settings shows the result.

security:
  Clients authenticate with 'Authorization: Bearer <token>' (the token file is created with a
  random token, mode 0600, when missing). Pods are admitted under the desktop policy: no
  privileged containers, no host namespaces or ports, host paths and devices only from the
  allow-lists. Everything an allowance opens is listed in docs/docker-sidecar.md.

signals:
  SIGTERM or SIGINT stops the service cleanly; pods keep running in Docker, and the next start
  adopts them (nothing is lost or duplicated).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kod-docker-sidecar",
        description="Run the pods of the desktop's virtual node in the local Docker engine, and "
        "serve the InterLink API (ping, create, list, get, delete, logs, watch) for interlink.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help=f"TOML config file (default {default_config_file()})")
    parser.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default 4000; 0 picks a free one)")
    parser.add_argument("--socket", default=None, help="listen on this unix socket (mode 0600) instead of TCP")
    parser.add_argument("--docker-url", default=None, help="the Docker engine (default unix:///var/run/docker.sock)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file (default ~/.config/kod/docker-sidecar.token)")
    parser.add_argument("--name", default=None, help="sidecar name, labels every Docker object (default docker)")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"], help="log level (default info)")
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings as JSON and exit")
    parser.add_argument("--version", action="version", version=f"kod-docker-sidecar {__version__}")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> DockerSidecarSettings:
    """Settings from the file, the environment and the flags."""
    listen = {k: v for k, v in {"host": args.host, "port": args.port, "socket": args.socket}.items() if v is not None}
    overrides = {
        "listen": listen or None,
        "docker_url": args.docker_url,
        "token_file": str(args.token_file) if args.token_file else None,
        "name": args.name,
        "log_level": args.log_level,
    }
    return load_settings(DockerSidecarSettings, args.config or default_config_file(), env_prefix=ENV_PREFIX, overrides=overrides)


async def serve(settings: DockerSidecarSettings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (pods keep running in Docker)."""
    await serve_app(
        create_app(settings),
        settings.listen,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        env_prefix=ENV_PREFIX,
        ready=ready,
        listening="kod-docker-sidecar listening",
        stopping="stopping (pods keep running in Docker)",
        log_fields={"docker": settings.docker_url, "name": settings.name},
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kod-docker-sidecar` console script."""
    args = parse_args(argv)
    return run_service("kod-docker-sidecar", lambda: load(args), serve, component="docker-sidecar",
                       print_settings=args.print_settings)


if __name__ == "__main__":
    sys.exit(main())
